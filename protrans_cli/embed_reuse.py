"""`embed --reuse FILE`: proteins that an earlier output of the same model and settings already
holds, found by sequence, are copied into this run's output instead of being computed.

    reuse = Reuse.open(["old.h5"], writer_kw)    # checks each file, indexes its proteins
    where = reuse.find(sequences)                # per sequence: a reusable protein's index, or None
    arrays, computed = reuse.arrays(where[0])    # read as the writer reaches the protein
    reuse.close()

A file is reused only when it was made as this run would make it: the settings `--resume`
compares (io.h5._check_resumable, with `reuse`), but for its layout (grouped or flat; a stacked
file is refused), its kinds (it must hold every kind this run writes; it may hold more) and its
`--part`. Its storage dtype must be this run's: float32 rows from a float16 file would not be
the rows a fresh run writes, and float16 rows of a float32 file would be a lossy copy the user
did not ask for. A protein is matched by the checksum of what the model sees of it (the
`checksum` attribute: under --long-policy truncate, of the kept prefix), whatever its id. The
index holds 16 bytes of that checksum and the dataset's name per protein; the arrays are read
one protein at a time when the writer reaches it, never up front.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

import numpy as np

from protrans_cli import console
from protrans_cli.errors import InputError, UsageError
from protrans_cli.io.h5 import KINDS, PER_PROTEIN, PER_RESIDUE, partial_path, sequence_checksum

_SAY_INDEX_BYTES = 64 << 20  # files whose indexing is announced (about 150 us a protein)


def check_reuse_paths(paths, output: Path) -> tuple[Path, ...]:
    """The --reuse files as paths, refused before the model loads: stdin, a missing file or a
    folder, an unfinished run's partial file, the output itself (or its partial file), a file
    given twice. Returns them as Paths."""
    from protrans_cli.io.files import directory_kind, missing_file
    from protrans_cli.io.h5 import EmbeddingsReader

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    try:
        paths = list(paths)
    except TypeError:
        raise UsageError(f"reuse must be a list of embeddings files, got {type(paths).__name__} {paths!r:.60}") from None
    if not all(isinstance(p, (str, os.PathLike)) for p in paths):
        raise UsageError(f"reuse must be a list of paths of embeddings files, got {paths!r:.60}")
    targets = {output.resolve(), partial_path(output).resolve()}
    seen: dict[Path, Path] = {}
    out = []
    for path in map(Path, paths):
        if str(path) == "-":
            raise UsageError("--reuse reads an HDF5 file in place, not stdin ('-'): give a file")
        if path.resolve() in targets:
            raise UsageError("--reuse names the output itself: --resume keeps the proteins of the output; "
                             "--reuse takes those of another file", path=str(path))
        if path.name.endswith(".partial"):
            raise UsageError("an unfinished embed run's file: finish it first (the same embed command with "
                             "--resume), then reuse its output", path=str(path))
        if not path.is_file():
            if path.is_dir():
                raise InputError("is a directory, expected an HDF5 file of embed" + directory_kind(path),
                                 path=str(path))
            raise InputError(missing_file(path) if not path.exists() else "not a file", path=str(path))
        real = path.resolve()
        if real in seen:
            raise UsageError(f"--reuse names it twice (also as {seen[real]}): give each file once", path=str(path))
        seen[real] = path
        out.append(path)
    for path in out:  # (a file no run can reuse, said before the model loads)
        with EmbeddingsReader(path) as reader:
            _check_layout(path, reader.attrs)
    return tuple(out)


class Reuse:
    """The proteins of the --reuse files, by the 16-byte digest of their sequence checksum
    (sorted), with the file and the dataset name that hold each; a file is opened (read-only) when
    its first protein is copied, and stays open until `close`."""

    def __init__(self, paths: list[Path], files: list, layouts: list[str], kinds: tuple[str, ...],
                 digests: np.ndarray, owners: np.ndarray, names: bytes, offsets: np.ndarray):
        self.paths, self.files, self.layouts, self.kinds = paths, files, layouts, kinds
        self.digests, self.owners, self.names, self.offsets = digests, owners, names, offsets
        # a file of a local model directory from before `weights_fingerprint`: its rows' weights
        # are not known, and the output must not record this run's as theirs (EmbeddingsWriter)
        self.weights_unknown = False
        # embed --structure-tokens (SaProt): the 3Di strings by id, the --reuse files' too (their
        # `structure_tokens` digest is this run's): a checksum is of the amino acids alone, and a
        # protein is reused only where its stored one was read in the same 3Di states
        self.structure = None

    @classmethod
    def open(cls, paths, writer_kw: dict, structure=None) -> "Reuse":
        from protrans_cli.io.h5 import h5_file

        kinds = tuple(writer_kw["kinds"])
        parts, layouts, unknown = [], [], False
        for path in map(Path, paths):
            layout, fingerprinted = _check_reusable(path, writer_kw)
            unknown |= not fingerprinted and bool(writer_kw["attrs"].get("weights_fingerprint"))
            size = path.stat().st_size
            if size >= _SAY_INDEX_BYTES:
                console.info(f"{path}: reading the ids and checksums of the proteins it holds "
                             f"({size / 2**20:,.0f} MiB; about 2 minutes per million proteins) for --reuse")
            with h5_file(path, "r") as f:
                parts.append(_index_file(f, path, layout, kinds))
            layouts.append(layout)
        digests = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, "S16")
        owners = np.concatenate([np.full(len(p[0]), i, dtype=np.int32) for i, p in enumerate(parts)]) \
            if parts else np.empty(0, np.int32)
        names = b"".join(p[1] for p in parts)
        lengths = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # one entry per sequence: the first file's (and its first dataset's) where several hold it
        unique, first = np.unique(digests, return_index=True)
        offsets = np.stack([starts[first], starts[first + 1]], axis=1) if len(first) else np.empty((0, 2), np.int64)
        reuse = cls(list(map(Path, paths)), [None] * len(parts), layouts, kinds, unique, owners[first], names, offsets)
        reuse.weights_unknown = unknown
        reuse.structure = structure
        return reuse

    def find(self, sequences: list[str]) -> list[int | None]:
        """Per sequence (what the model sees, as the writer's checksum is taken), the index of a
        reusable protein that holds it, or None."""
        if not len(self.digests) or not sequences:
            return [None] * len(sequences)
        query = np.array([bytes.fromhex(sequence_checksum(s)[4:]) for s in sequences], dtype="S16")
        at = np.minimum(np.searchsorted(self.digests, query), len(self.digests) - 1)
        hit = self.digests[at] == query
        return [int(i) if h and self._same_states(s, int(i)) else None for s, i, h in zip(sequences, at, hit)]

    def _same_states(self, sequence: str, index: int) -> bool:
        """Whether the reusable protein `index` was read in the 3Di states `sequence` pairs with its
        residues (always, for a sequence without them): two proteins of one amino-acid sequence in
        other states (two structures of it) share a checksum, not their embeddings. A miss is
        computed, never copied."""
        from protrans_cli.residues import residue_text, split_char

        if self.structure is None or residue_text(sequence) == sequence:
            return True
        states = "".join(split_char(c)[1] for c in sequence if c != ":")
        stored = self.structure.get(self.stored_id(index))
        return stored is not None and stored.startswith(states)  # (a truncated protein: of its kept prefix)

    def stored_id(self, index: int) -> str:
        """The id of the reusable protein `index` (its `id` attribute, else its dataset's name)."""
        from protrans_cli.io.h5 import _low_attribute_id, open_local, unescape_key

        self._open(int(self.owners[index]))
        f, groups = self.files[int(self.owners[index])]
        start, end = self.offsets[index]
        name = self.names[start:end]
        with contextlib.suppress(KeyError, OSError, RuntimeError, ValueError):
            ident = _low_attribute_id(open_local(groups[0], name, data=True))
            if ident is not None:
                return ident
        return unescape_key(name.decode("utf-8", "replace"))

    def _open(self, owner: int) -> None:
        from protrans_cli.io.h5 import h5_file

        if self.files[owner] is None:
            f = h5_file(self.paths[owner], "r")
            self.files[owner] = (f, [f if self.layouts[owner] == "flat" else f[kind] for kind in self.kinds])

    def arrays(self, index: int) -> tuple[dict, str | None]:
        """The stored arrays (by kind, as stored: no conversion) and the `computed` attribute of
        the reusable protein `index`."""
        from protrans_cli.io.h5 import _read_text_attr, open_local, read_array

        owner = int(self.owners[index])
        self._open(owner)
        f, groups = self.files[owner]
        start, end = self.offsets[index]
        name = self.names[start:end]
        arrays, computed = {}, None
        try:  # (through h5py's low-level calls: its dictionary interface cost about 500 us a protein)
            for kind, group in zip(self.kinds, groups):
                obj = open_local(group, name, data=True)
                arrays[kind] = read_array(group, name.decode("utf-8"), obj)
                if computed is None:
                    computed = _read_text_attr(obj, b"computed")
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot read the protein stored as {name.decode('utf-8', 'replace')!r} for --reuse: {exc} (changed or damaged "
                             "since the run began?)", path=str(self.paths[owner]),
                             record=name.decode("utf-8", "replace")) from None
        return arrays, computed

    def close(self) -> None:
        for i, held in enumerate(self.files):
            if held is not None:
                held[0].close()
                self.files[i] = None


def _check_layout(path: Path, attrs) -> str:
    """The layout of a --reuse file (its attributes `attrs`), refused unless grouped or flat."""
    from protrans_cli.io.h5 import _comparable

    layout = str(_comparable(attrs.get("layout")))
    if layout == "stacked":
        raise UsageError("cannot reuse its proteins: a stacked file is read by rows, not by protein; write it "
                         "back as one first (protrans merge FILE -o FILE_grouped.h5 --layout grouped) and reuse "
                         "that", path=str(path))
    if layout not in ("grouped", "flat"):
        raise UsageError(f"cannot reuse its proteins: its layout {layout!r} is not grouped or flat: damaged, or "
                         "not written by protrans embed", path=str(path))
    return layout


def _check_reusable(path: Path, writer_kw: dict) -> tuple[str, bool]:
    """Refuse a file made otherwise than this run would make its rows; returns its layout and
    whether it records a `weights_fingerprint`."""
    from protrans_cli.embed_resume import _writer_attributes
    from protrans_cli.io.h5 import EmbeddingsReader, _check_resumable, _comparable

    with EmbeddingsReader(path) as reader:
        attrs = dict(reader.attrs)
    # (the settings that change the rows, in --resume's test: model, commit, layers, pooling,
    # storage dtype, max length and long policy, chunk overlap, chains and linker, 3Di prefix)
    _check_resumable(path, _writer_attributes(writer_kw), writer_kw["resume_equal"], reuse=True)
    layout = _check_layout(path, attrs)
    held = tuple(k for k in KINDS if k in str(_comparable(attrs.get("kinds"))).split(","))
    missing = [k for k in writer_kw["kinds"] if k not in held]
    if missing:
        flag = {PER_RESIDUE: "--per-residue", PER_PROTEIN: "--per-protein"}
        raise UsageError(f"cannot reuse its proteins: it holds {' and '.join(held) or 'no'} embeddings, this run "
                         f"writes {' and '.join(missing)} too (embed it with {' '.join(flag[k] for k in missing)}, "
                         "or leave out this --reuse)", path=str(path))
    return layout, bool(_comparable(attrs.get("weights_fingerprint")))


def _index_file(f, path: Path, layout: str, kinds: tuple[str, ...]) -> tuple[np.ndarray, bytes, np.ndarray]:
    """(digests of the sequence checksums, dataset names joined, their lengths) of the proteins of
    an open file that hold every kind in `kinds` (a protein a run was killed in the middle of
    may lack one); proteins without a checksum are left out. About 50 bytes a protein."""
    from protrans_cli.io.h5 import UNREADABLE, _link_names, digest128

    empty = np.empty(0, "S16"), b"", np.empty(0, np.int64)
    try:
        groups = [f if layout == "flat" else f.get(kind) for kind in kinds]
        if any(group is None for group in groups):
            return empty
        sums, names, lengths, keys = [], [], [], []  # (the first kind's proteins, a block at a time)
        pairs = _checksums(groups[0])
        for block in iter(lambda: list(itertools.islice(pairs, 4096)), []):
            block = [(name, checksum) for name, checksum in block
                     if isinstance(checksum, str) and checksum.startswith("md5:") and len(checksum) == 36]
            sums.append(np.array([bytes.fromhex(c[4:]) for _, c in block], dtype="S16"))
            names.append(b"".join(n for n, _ in block))
            lengths.append(np.array([len(n) for n, _ in block], dtype=np.int64))
            keys.append(np.array([digest128(n.decode("utf-8", "surrogateescape")) for n, _ in block], dtype="S16"))
        if not sums:
            return empty
        sums, names, lengths, keys = np.concatenate(sums), b"".join(names), np.concatenate(lengths), np.concatenate(keys)
        keep = np.ones(len(sums), dtype=bool)
        for group in groups[1:]:  # (a protein is complete when every kind this run writes holds it)
            other = np.array([digest128(n.decode("utf-8", "surrogateescape")) for n in _link_names(group)],
                             dtype="S16")
            keep &= np.isin(keys, other)
    except UNREADABLE as exc:
        raise InputError(f"cannot reuse its proteins: not a readable HDF5 file ({exc})", path=str(path)) from None
    if not keep.all():
        starts = np.concatenate([[0], np.cumsum(lengths)])
        names = b"".join(names[starts[i]:starts[i + 1]] for i in np.flatnonzero(keep))
        sums, lengths = sums[keep], lengths[keep]
    return sums, names, lengths


def _checksums(group):
    """(dataset name, its `checksum` attribute or None) of every dataset of a group of a finished
    output, through h5py's low-level calls: the names are what `arrays` opens, and the id
    attribute is not read (about half the cost of `stored_proteins`)."""
    import h5py

    from protrans_cli.io.h5 import _link_names, _read_text_attr

    for name in _link_names(group):
        obj = h5py.h5o.open(group.id, name)
        if isinstance(obj, h5py.h5d.DatasetID):
            yield name, _read_text_attr(obj, b"checksum")

"""The stacked layout: every per-protein vector in one (N, D) array, with the ids beside it.

    /per_protein      float32|float16 (N, D), or (N, n_layers, D) with several --layer
    /ids              variable-length UTF-8 (N,)   the FASTA ids (row i is protein ids[i])
    /headers          variable-length UTF-8 (N,)   the header lines
    /lengths          int64 (N,)                   residues
    /checksums        ASCII (N,)                   "md5:<hex>" of each sequence (io.h5.sequence_checksum)
    /truncated_from   int64 (N,)                   full length of a truncated protein, 0 for the others
    /chunks           int64 (N,)                   windows stitched for a chunked protein, 0 for the others
    /computed         variable-length UTF-8 (N,)   as the `computed` attribute of the other layouts, "" for the others

Rows are in the order of their keys (io.h5.escape_key of the ids, as bytes: the order of HDF5's
name index of the partial file), so the file does not depend on batching, `--resume` or torchrun: the
file of an interrupted and resumed run is that of an uninterrupted one. A file of a million
proteins is two reads for numpy (`f["per_protein"][()]`, `f["ids"].asstr()[()]`), where one
dataset per protein costs a lookup each.

A run writes its partial file in the grouped structure (`/per_protein/<key>`, with the
`layout` attribute "stacked"), resumable as any other, and `stack_file` writes the stacked
file from it when the run completes; `unstack_file` does the reverse for a finished file that
a `--resume` extends.
"""

from __future__ import annotations

import contextlib
import os
from array import array
from pathlib import Path

import numpy as np

from protrans_cli.errors import InputError, RuntimeFailure, first_line
from protrans_cli.io import disk

PER_PROTEIN = "per_protein"
TEXT_COLUMNS = ("ids", "headers", "computed")
COUNT_COLUMNS = ("lengths", "truncated_from", "chunks")
COLUMNS = ("ids", "headers", "lengths", "checksums", "truncated_from", "chunks", "computed")
# dataset attribute of the other layouts -> column
_ATTRIBUTE_COLUMNS = {"id": "ids", "header": "headers", "length": "lengths", "checksum": "checksums",
                      "truncated_from": "truncated_from", "chunks": "chunks", "computed": "computed"}
BLOCK_BYTES = 32 << 20  # rows read and written at a time
BLOCK_ROWS = 8192  # and at most this many rows (their columns are Python objects until written)


def is_stacked(f) -> bool:
    """Whether an open h5py file has the stacked structure (not a stacked run's partial file)."""
    import h5py

    if f.get(PER_PROTEIN, getclass=True) is not h5py.Dataset:
        return False
    # (one whose ids column is lost is a damaged stacked file, said so, not a flat file of one protein)
    layout = f.attrs.get("layout")
    return f.get("ids", getclass=True) is h5py.Dataset or (layout.decode("utf-8", "replace") if isinstance(
        layout, bytes) else layout) == "stacked"


def _rows_per_block(row_bytes: int) -> int:
    return max(1, min(BLOCK_ROWS, BLOCK_BYTES // max(1, row_bytes)))


def stack_file(source, target, *, then: str) -> int:
    """Write `target` in the stacked layout from `source`, a file of the grouped structure (a
    stacked run's partial file): its attributes, and its per-protein vectors in key order. Made
    under a hidden name in the same folder and renamed, so `target` is whole or as it was;
    `source` is left as it is. `then`: what the user does when there is no room. Returns rows."""
    import h5py

    from protrans_cli.io.h5 import h5_file, unescape_key

    with h5_file(source, "r") as src, _written_as(Path(target), "stacking", source) as temporary:
        group = src.get(PER_PROTEIN)
        records = _Names(group)
        shape, dtype = _row_shape(src, group, records)
        row_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        disk.ensure_room(temporary, len(records) * (row_bytes + 256), then, shown=target,
                         what="the stacked file")
        with h5_file(temporary, "x") as out:
            for key, value in src.attrs.items():
                out.attrs[key] = value
            n = len(records)
            data, columns = create_stacked(out, n, shape, dtype)
            step = _rows_per_block(row_bytes)
            for start in range(0, n, step):
                block = records.slice(start, start + step)
                rows = np.empty((len(block), *shape), dtype=dtype)
                values = {name: [] for name in COLUMNS}
                for i, name in enumerate(block):
                    ident = unescape_key(name.decode("utf-8"))
                    obj = h5py.h5o.open(group.id, name)
                    try:  # (HDF5 checks the shape; the dtype is the run's storage dtype)
                        obj.read(h5py.h5s.ALL, h5py.h5s.ALL, rows[i])
                    except (TypeError, ValueError, OSError, RuntimeError):
                        raise RuntimeFailure(f"protein {ident!r} has a vector of shape {obj.shape}, the others "
                                             f"{shape}: not one embedding run's", path=str(source)) from None
                    found = _attributes(obj)
                    found["id"] = ident
                    for attribute, column in _ATTRIBUTE_COLUMNS.items():
                        value = found.get(attribute)
                        if column in COUNT_COLUMNS:
                            value = int(value) if value is not None else 0
                        elif value is None:
                            value = ""
                        values[column].append(value)
                end = start + len(block)
                data[start:end] = rows
                for column, dataset in columns.items():
                    dataset[start:end] = (np.array(values[column], dtype=np.int64) if column in COUNT_COLUMNS
                                          else values[column])
            out.flush()
    return len(records)


def create_stacked(out, n: int, shape, dtype) -> tuple:
    """The stacked layout's datasets of `n` rows in an open h5py file: (the (n, *shape) array,
    {column name: its dataset}), to be filled."""
    import h5py

    data = out.create_dataset(PER_PROTEIN, shape=(n, *shape), dtype=dtype)
    text = h5py.string_dtype("utf-8")
    columns = {name: out.create_dataset(name, shape=(n,), dtype=text) for name in TEXT_COLUMNS}
    columns.update({name: out.create_dataset(name, shape=(n,), dtype=np.int64) for name in COUNT_COLUMNS})
    columns["checksums"] = out.create_dataset("checksums", shape=(n,), dtype=h5py.string_dtype("ascii"))
    return data, columns


_READERS: dict = {}  # memory types and buffers for reading attributes (made once)


def _attributes(obj) -> dict:
    """The attributes of one protein's dataset that the columns hold, through h5py's low-level
    calls with the types embed writes (a scalar variable-length string, a scalar int64) read
    into buffers made once: the general reader (io.h5.read_attr) cost 20 us an attribute, most
    of what stacking a file took. Another type goes through read_attr."""
    import h5py

    from protrans_cli.io.h5 import _plain, _text_type, read_attr

    if not _READERS:
        _READERS["text"] = _text_type()
        _READERS["int"] = np.empty((), dtype=np.int64)
    names: list[bytes] = []
    h5py.h5a.iterate(obj, names.append)
    found = {}
    for raw in names:
        name = raw.decode("utf-8", "replace")
        if name not in _ATTRIBUTE_COLUMNS or name == "id":
            continue
        try:
            attr = h5py.h5a.open(obj, raw)
            if _ATTRIBUTE_COLUMNS[name] in COUNT_COLUMNS:
                out = _READERS["int"]
                attr.read(out)
                found[name] = int(out)
            else:
                mtype, dtype = _READERS["text"]
                out = np.empty((), dtype=dtype)
                attr.read(out, mtype=mtype)
                found[name] = _plain(out[()])
        except (TypeError, ValueError, OSError, RuntimeError):  # another type than embed writes
            found[name] = _plain(read_attr(obj, name))
    return found


@contextlib.contextmanager
def _written_as(target: Path, what: str, source):
    """A hidden file beside `target` (`.TARGET.what`, one a killed run left removed first) for the
    block to write; when the block ends it gets the permissions of `source` (as a renamed partial
    file keeps its own in the other layouts: a finished file chmod-ed 0600 stays 0600 when
    --resume extends it, not the umask's), is synced and renamed `target`, so that `target` is
    whole or as it was; when the block fails, it is removed."""
    temporary = target.with_name(f".{target.name}.{what}")
    with contextlib.suppress(OSError):
        temporary.unlink()
    try:
        yield temporary
        with contextlib.suppress(OSError):
            os.chmod(temporary, os.stat(source).st_mode & 0o777)
        with open(temporary, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


class _Names:
    """The names of a partial file's per-protein datasets in the order HDF5's name index keeps
    them (the keys' bytes, which is the rows' order), packed: the bytes of all of them and an
    offset each. A list of Python bytes cost about 1 KB a protein at the peak with its sort
    (about 50 GB for UniRef50's 50 million); this is the names' length and 8 bytes."""

    def __init__(self, group):
        import h5py

        from protrans_cli.io.h5 import hard_links

        self.data = bytearray()
        self.ends = array("Q")

        def add(name):  # (links out of the file refused, as everywhere: hard_links)
            self.data += name
            self.ends.append(len(self.data))

        if group is not None:
            hard_links(group, add, idx_type=h5py.h5.INDEX_NAME, order=h5py.h5.ITER_INC)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> bytes:
        return bytes(self.data[self.ends[i - 1] if i else 0:self.ends[i]])

    def slice(self, start: int, end: int) -> list[bytes]:
        return [self[i] for i in range(start, min(end, len(self)))]


def _row_shape(src, group, records) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of one row: the first protein's, else (none written: every protein
    failed) from the file's attributes."""
    import h5py

    if records:
        obj = h5py.h5o.open(group.id, records[0])
        return tuple(obj.shape), obj.dtype
    return row_from_attributes(src.attrs)


def row_from_attributes(attrs) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of a per-protein vector as a file's attributes give them (a file
    that holds none): (n_layers, D) with several layers, else (D,); the storage dtype."""
    layers = np.atleast_1d(attrs.get("layers", [-1]))
    dim = int(attrs.get("embedding_dim", 0) or 0)
    dtype = np.dtype(str(attrs.get("storage_dtype", "float32") or "float32"))
    return ((len(layers), dim) if len(layers) > 1 else (dim,)), dtype


def unstack_file(source, target) -> int:
    """Write `target`, a partial file of the grouped structure (what a stacked run writes), from
    the finished stacked file `source`: the start of a `--resume` that extends it. Made under a
    hidden name and renamed; returns the proteins."""
    from protrans_cli.io.h5 import _create_dataset, _set_attr, escape_key, h5_file

    with h5_file(source, "r") as src, _written_as(Path(target), "unstacking", source) as temporary:
        view = StackedView(src, str(source))
        count = len(view)
        disk.ensure_room(temporary, os.path.getsize(source) + 512 * count, "free some space and run the "
                         "same command with --resume", shown=target, what="a partial copy of the stacked file")
        with h5_file(temporary, "x", track_order=True) as out:
            for key, value in src.attrs.items():
                out.attrs[key] = value
            group = out.create_group(PER_PROTEIN, track_order=True)
            for rows, attrs in view.blocks():
                for row, record in zip(rows, attrs):
                    ds = _create_dataset(group, escape_key(record["id"]), row)
                    for name, value in record.items():
                        _set_attr(ds, name, value)
                    ds.close()
            out.flush()
    return count


class StackedView:
    """Read access to an open stacked file (EmbeddingsReader's, and `--resume`'s)."""

    def __init__(self, f, path: str):
        import h5py

        self.file = f
        self.path = path
        self.data = f[PER_PROTEIN]
        missing = [name for name in COLUMNS if f.get(name, getclass=True) is not h5py.Dataset]
        if missing:
            raise InputError(f"a stacked embeddings file without its {', '.join(missing)} column(s): damaged, "
                             "or not written by protrans embed", path=path)
        self._rows: dict[str, int] | None = None
        self._columns: dict[str, np.ndarray] = {}
        # (checked here, once: another type was a traceback where it was first read, or read as it came)
        if self.data.ndim not in (2, 3) or self.data.dtype.kind not in "fiub":
            raise InputError(f"a stacked embeddings file whose per_protein is a {self.data.dtype} array of shape "
                             f"{self.data.shape}, not (N, D) or (N, n_layers, D) numbers: damaged, or not written "
                             "by protrans embed", path=path)
        if any(f[name].shape != (len(self.data),) for name in COLUMNS):
            raise InputError("a stacked embeddings file whose columns are not one per row of per_protein: damaged",
                             path=path)
        wrong = [name for name in COLUMNS
                 if (f[name].dtype.kind not in "iu" if name in COUNT_COLUMNS
                     else h5py.check_string_dtype(f[name].dtype) is None)]
        if wrong:
            raise InputError(f"a stacked embeddings file whose {', '.join(wrong)} column(s) hold "
                             f"{', '.join('text' if h5py.check_string_dtype(f[name].dtype) else str(f[name].dtype) for name in wrong)} "
                             f"(text expected in "
                             f"{', '.join(n for n in COLUMNS if n not in COUNT_COLUMNS)}, integers in "
                             f"{', '.join(COUNT_COLUMNS)}): "
                             "damaged, or not written by protrans embed", path=path)

    def __len__(self) -> int:
        return len(self.data)

    def ids(self) -> list[str]:
        return list(self._text("ids"))

    def _text(self, name: str, selection=()) -> np.ndarray:
        """A text column (or `selection` of it) as str: UTF-8, which ASCII (the checksums, another
        tool's fixed-length strings) is part of."""
        try:
            return self.file[name].asstr("utf-8")[selection]
        except UnicodeDecodeError:
            raise InputError(f"a stacked embeddings file whose {name} column is not UTF-8 text: damaged, or not "
                             "written by protrans embed", path=self.path) from None

    def rows(self) -> dict[str, int]:
        """id -> row."""
        if self._rows is None:
            ids = self.ids()
            self._rows = {ident: i for i, ident in enumerate(ids)}
            if len(self._rows) != len(ids):
                seen: set[str] = set()
                twice = next(i for i in ids if i in seen or seen.add(i))
                raise InputError(f"protein {twice!r} has two rows: ids must be unique (damaged, or not written "
                                 "by protrans embed)", path=self.path)
        return self._rows

    def column(self, name: str) -> np.ndarray:
        """A whole column, read once."""
        if name not in self._columns:
            self._columns[name] = self._read(name)
        return self._columns[name]

    def _read(self, name: str, selection=()) -> np.ndarray:
        """A column (or `selection` of it): a count column's integers, another's text as str."""
        return self.file[name][selection] if name in COUNT_COLUMNS else self._text(name, selection)

    def _block_rows(self) -> int:
        """Rows read at a time (`_rows_per_block` of one row's bytes)."""
        return _rows_per_block(int(np.prod(self.data.shape[1:], dtype=np.int64)) * self.data.dtype.itemsize)

    def take(self, rows, layer: int | None = None) -> np.ndarray:
        """The vectors of `rows` (in that order) as float32, at stored layer index `layer` where
        the file holds several (checked by the caller: heads.data._check_stacked_layer); read a
        block at a time in row order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.data.shape[-1]), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        step = self._block_rows()
        at = 0
        while at < len(order):
            start = int(rows[order[at]])
            end = min(len(self), start + step)
            block = self.data[start:end]
            if block.ndim == 3:
                block = block[:, -1 if layer is None else layer]
            stop = at
            while stop < len(order) and rows[order[stop]] < end:
                stop += 1
            picked = order[at:stop]
            out[picked] = block[rows[picked] - start]
            at = stop
        return out

    def record(self, i: int, columns: dict | None = None) -> dict:
        """Row `i`'s attributes as the other layouts' datasets carry them (the optional ones
        only where they apply); `columns`: a block's, else the whole columns (read once)."""
        get = (lambda name: columns[name][i]) if columns is not None else (lambda name: self.column(name)[i])
        attrs = {"id": get("ids"), "header": get("headers"), "length": int(get("lengths")),
                 "checksum": get("checksums")}
        for attribute, column in (("truncated_from", "truncated_from"), ("chunks", "chunks")):
            value = int(get(column))
            if value:
                attrs[attribute] = value
        computed = get("computed")
        if computed:
            attrs["computed"] = computed
        return attrs

    def get(self, ident: str) -> np.ndarray:
        row = self.rows().get(ident)
        if row is None:
            raise InputError("no per_protein embedding for this id", path=self.path, record=ident)
        return self.data[row]

    def blocks(self):
        """(rows, their attributes) a block at a time, in row order."""
        n = len(self)
        step = self._block_rows()
        for start in range(0, n, step):
            end = min(n, start + step)
            columns = {name: self._read(name, slice(start, end)) for name in COLUMNS}
            yield self.data[start:end], [self.record(i, columns) for i in range(end - start)]


def stacked_done(f):
    """(ids, checksums) of a finished stacked file a block at a time, as `--resume` compares
    them (a truncated protein's checksum is its kept prefix's, as the other layouts record it);
    never the whole columns as Python strings (about 130 bytes a protein)."""
    view = StackedView(f, f.filename)
    for start in range(0, len(view), BLOCK_ROWS):
        selection = np.s_[start:start + BLOCK_ROWS]
        yield view._text("ids", selection), view._text("checksums", selection)


def stacking_failure(exc: BaseException, partial) -> RuntimeFailure:
    return RuntimeFailure(f"cannot write the stacked file ({first_line(exc)}); every protein is in {partial}: run "
                          "the same command with --resume to write it again", path=str(partial)[:-len(".partial")])

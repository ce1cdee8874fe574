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
file from it when the run completes. A `--resume` that extends a finished stacked file starts
a partial file of its new proteins alone (`start_extension`: the `extends` attribute, and
OUT.partial.base, a hard link to the finished file), and `stack_file` merges the two, in key
order, a block of rows at a time: adding 10 proteins to 99,990 wrote every one of them twice
(unstacked into the partial file, then stacked again): 21.5 s and more, 2.6 s now. `unstack_file`
is that older way, kept for a finished file whose rows are not in key order (another tool's)
or a folder that takes no hard link.
"""

from __future__ import annotations

import contextlib
import os
from array import array
from pathlib import Path

import numpy as np

from protrans_cli.errors import InputError, RuntimeFailure, a_or_an, again_with_resume, option
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
EXTENDS = "extends"  # a partial file's attribute: the rows of the finished file it adds to (base_path)
EXTENDS_FILE = "extends_file"  # and its size and modification time ("SIZE MTIME_NS"): not another of as many rows


def is_stacked(f) -> bool:
    """Whether an open h5py file has the stacked structure (not a stacked run's partial file)."""
    import h5py

    if f.get(PER_PROTEIN, getclass=True) is not h5py.Dataset:
        return False
    # (one whose ids column is lost is a damaged stacked file, said so, not a flat file of one protein)
    layout = f.attrs.get("layout")
    layout = layout.decode("utf-8", "replace") if isinstance(layout, bytes) else layout
    if layout == "flat":  # (embed's flat file of proteins whose ids are "per_protein" and "ids")
        return False
    return f.get("ids", getclass=True) is h5py.Dataset or layout == "stacked"


def _rows_per_block(row_bytes: int) -> int:
    return max(1, min(BLOCK_ROWS, BLOCK_BYTES // max(1, row_bytes)))


def stack_file(source, target, *, then: str, base=None) -> int:
    """Write `target` in the stacked layout from `source`, a file of the grouped structure (a
    stacked run's partial file): its attributes, and its per-protein vectors in key order; with
    `base` (a finished stacked file that `source` extends: start_extension), its rows merged in,
    a protein in both taken from `source`. Made under a hidden name in the same folder and
    renamed, so `target` is whole or as it was; `source` and `base` are left as they are.
    `then`: what the user does when there is no room. Returns rows."""
    from protrans_cli.io.h5 import h5_file

    with contextlib.ExitStack() as stack:
        src = stack.enter_context(h5_file(source, "r"))
        view = StackedView(stack.enter_context(h5_file(base, "r")), str(base)) if base is not None else None
        temporary = stack.enter_context(_written_as(Path(target), "stacking", source))
        group = src.get(PER_PROTEIN)
        records = _Names(group)
        shape, dtype = _row_shape(src, group, records)
        if view is not None:
            found = (tuple(view.data.shape[1:]), view.data.dtype)
            if not records:
                shape, dtype = found
            elif found != (shape, dtype):
                raise RuntimeFailure(f"the finished file it extends ({base}) holds rows of shape {found[0]} and "
                                     f"{found[1]}, this run {shape} and {dtype}: not one embedding run's",
                                     path=str(source))
        plan = _merge_plan(view, records) if view is not None else [[False, 0, len(records)]]
        n = sum(end - start for _, start, end in plan)
        row_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        disk.ensure_room(temporary, n * (row_bytes + 256), then, shown=target, what="the stacked file")
        with h5_file(temporary, "x") as out:
            for key, value in src.attrs.items():
                if key not in (EXTENDS, EXTENDS_FILE):
                    out.attrs[key] = value
            data, columns = create_stacked(out, n, shape, dtype)
            _fill(data, columns, plan, view, group, records, source)
            out.flush()
    return n


def _merge_plan(view: StackedView, records: _Names) -> list[list]:
    """The rows of the merged file in key order, as runs [from the base file?, start, end]: the
    base file's rows are in key order (keyed_rows checks), the partial file's names too (HDF5's
    name index); a protein in both is the partial file's (this run's)."""
    import heapq

    plan: list[list] = []
    last = None
    news = ((records[j], 0, j) for j in range(len(records)))
    for key, from_base, i in heapq.merge(news, keyed_rows(view, 1)):
        if key == last:  # (the base file's row of a protein this run wrote again)
            continue
        last = key
        if plan and plan[-1][0] == from_base and plan[-1][2] == i:
            plan[-1][2] = i + 1
        else:
            plan.append([from_base, i, i + 1])
    return plan


def keyed_rows(view: StackedView, tag: int, skip=frozenset()):
    """(key as bytes, `tag`, row) of a stacked file's rows but those of the ids in `skip`, read a
    block of ids at a time; rows out of key order (not embed's file) are an InputError."""
    from protrans_cli.io.h5 import escape_key

    previous = b""
    for start in range(0, len(view), BLOCK_ROWS):
        for offset, ident in enumerate(view._read("ids", np.s_[start:start + BLOCK_ROWS])):
            key = escape_key(ident).encode("utf-8")
            if key <= previous:
                raise InputError(f"a stacked file whose rows are not in the order of their keys (row {start + offset}, "
                                 f"{ident!r}): damaged, or not written by protrans embed", path=view.path)
            previous = key
            if ident not in skip:
                yield key, tag, start + offset


def _fill(data, columns: dict, plan: list, view: StackedView | None, group, records: _Names, source) -> None:
    """Write the stacked datasets a block of rows at a time, in `plan`'s order: a base row from
    the base file's block read once, a partial file's protein from its dataset."""
    step = _rows_per_block(int(np.prod(data.shape[1:], dtype=np.int64)) * data.dtype.itemsize)
    rows = np.empty((step, *data.shape[1:]), dtype=data.dtype)
    values: dict[str, list] = {name: [] for name in COLUMNS}
    filled = at = 0
    cached: tuple = (None, None, None)  # (block index, its rows, its columns) of the base file

    def emit():
        nonlocal filled, at
        data[at:at + filled] = rows[:filled]
        for column, dataset in columns.items():
            dataset[at:at + filled] = (np.array(values[column], dtype=np.int64) if column in COUNT_COLUMNS
                                       else values[column])
            values[column].clear()
        at += filled
        filled = 0

    for from_base, start, end in plan:
        pos = start
        while pos < end:
            if from_base:
                block = pos // step
                if cached[0] != block:
                    rows_slice = np.s_[block * step:(block + 1) * step]
                    cached = (block, view.data[rows_slice], {name: view._read(name, rows_slice) for name in COLUMNS})
                stop = min(end, (block + 1) * step, pos + step - filled)
                first, last = pos - block * step, stop - block * step
                rows[filled:filled + stop - pos] = cached[1][first:last]
                for name in COLUMNS:
                    values[name].extend(cached[2][name][first:last].tolist())
            else:
                stop = min(end, pos + step - filled)
                for i in range(pos, stop):
                    _read_record(group, records[i], rows, filled + i - pos, values, source)
            filled += stop - pos
            pos = stop
            if filled == step:
                emit()
    if filled:
        emit()


def _read_record(group, name: bytes, rows: np.ndarray, i: int, values: dict, source) -> None:
    """One protein of a partial file into row `i` of `rows` and its attributes onto `values`."""
    import h5py

    from protrans_cli.io.h5 import numpy_type, unescape_key

    ident = unescape_key(name.decode("utf-8"))
    obj = h5py.h5o.open(group.id, name)
    memory_type = numpy_type(rows.dtype)  # (made once: `read` made it from the array's dtype for every protein)
    # (compared here: HDF5's read into the row with both selections ALL does not, and a longer
    # vector was written past its row, a shorter one left the row's old values; the dtype is the
    # run's storage dtype)
    if tuple(obj.shape) != rows.shape[1:]:
        raise RuntimeFailure(f"protein {ident!r} has a vector of shape {tuple(obj.shape)}, the others "
                             f"{rows.shape[1:]}: not one embedding run's", path=str(source))
    try:
        obj.read(h5py.h5s.ALL, h5py.h5s.ALL, rows[i], mtype=memory_type)
    except (TypeError, ValueError, OSError, RuntimeError):
        raise RuntimeFailure(f"protein {ident!r}: its vector cannot be read as {rows.dtype}", path=str(source)) from None
    found = _attributes(obj)
    found["id"] = ident
    for attribute, column in _ATTRIBUTE_COLUMNS.items():
        value = found.get(attribute)
        if column in COUNT_COLUMNS:
            value = int(value) if value is not None else 0
        elif value is None:
            value = ""
        values[column].append(value)


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

    from protrans_cli.io.h5 import _plain, _text_type, numpy_type, read_attr

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
                attr.read(out, mtype=numpy_type(np.int64))
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
            disk.sync(fh.fileno(), target)
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
        disk.ensure_room(temporary, os.path.getsize(source) + 512 * count, f"free some space and {again_with_resume()}",
                         shown=target, what="a partial copy of the stacked file")
        with h5_file(temporary, "x", track_order=True) as out:
            for key, value in src.attrs.items():
                out.attrs[key] = value
            group = out.create_group(PER_PROTEIN, track_order=True)
            for rows, attrs in view.blocks():
                for row, record in zip(rows, attrs):
                    key = escape_key(record["id"])
                    if key in group:  # (HDF5's "name already exists" traceback, for another tool's file)
                        view.rows()  # (raises, naming the id)
                    ds = _create_dataset(group, key, row)
                    for name, value in record.items():
                        _set_attr(ds, name, value)
                    ds.close()
            out.flush()
    return count


def base_path(partial) -> Path:
    """`out.h5.partial.base`: the finished stacked file that the partial file of a `--resume`
    extends, as a hard link (the run replaces `out.h5` by a rename; the link keeps the rows it
    adds to, whatever happens to `out.h5` meanwhile)."""
    partial = Path(partial)
    return partial.with_name(partial.name + ".base")


def start_extension(finished, partial) -> bool:
    """The start of a `--resume` that adds proteins to the finished stacked file `finished`:
    `partial` made with its attributes and no protein, `extends` set to its rows, and
    base_path(partial) linked to it; stack_file merges the two when the run completes. False,
    with nothing made, where its rows are not in key order (another tool's file) or the folder
    takes no hard link: the caller unstacks it then (unstack_file)."""
    from protrans_cli.io.h5 import h5_file

    finished, partial = Path(finished), Path(partial)
    with h5_file(finished, "r") as src:
        view = StackedView(src, str(finished))
        try:
            for _ in keyed_rows(view, 0):
                pass
        except InputError:
            return False
        rows = len(view)
        attrs = dict(src.attrs.items())
    base = base_path(partial)
    with contextlib.suppress(OSError):
        base.unlink()  # (one a killed run left)
    try:
        os.link(finished, base)
    except OSError:
        return False
    try:
        with _written_as(partial, "extending", finished) as temporary:
            disk.ensure_room(temporary, 0, f"free some space and {again_with_resume()}",
                             shown=partial.with_name(partial.name[:-len(".partial")]), what="a partial file")
            with h5_file(temporary, "x", track_order=True) as out:
                for key, value in attrs.items():
                    out.attrs[key] = value
                out.attrs[EXTENDS] = np.int64(rows)
                out.attrs[EXTENDS_FILE] = _file_stamp(base)
                out.create_group(PER_PROTEIN, track_order=True)
                out.flush()
    except BaseException:
        with contextlib.suppress(OSError):
            base.unlink()
        raise
    return True


def extension_base(f, partial) -> Path | None:
    """The finished stacked file that the open partial file `f` (at `partial`) adds proteins
    to (start_extension), None where it adds to none. A RuntimeFailure where that file is gone,
    or holds another number of rows, or has another size or modification time (`extends_file`)
    than when the run began."""
    from protrans_cli.io.h5 import h5_file

    rows = f.attrs.get(EXTENDS)
    if rows is None:
        return None
    partial = Path(partial)
    base = base_path(partial)
    again = (f"remove {partial.name} and {again_with_resume()} (what that run added is embedded "
             "again; the output is as it was before it)")
    if not base.exists():
        adds = option("a --resume adds", "a run with resume=True adds")
        raise RuntimeFailure(f"{partial.name} holds the proteins {adds} to the finished file linked as {base.name}, "
                             f"which is gone: {again}", path=str(partial))
    with h5_file(base, "r") as b:
        found = len(StackedView(b, str(base)))
    if found != int(rows):
        raise RuntimeFailure(f"{partial.name} adds proteins to the {int(rows):,} of the finished file linked as "
                             f"{base.name}, which now holds {found:,}: {again}", path=str(partial))
    stamp = f.attrs.get(EXTENDS_FILE)
    if stamp is not None and (stamp.decode() if isinstance(stamp, bytes) else str(stamp)) != _file_stamp(base):
        raise RuntimeFailure(f"{partial.name} adds proteins to the finished file linked as {base.name}, which has "
                             f"been changed or replaced since (its size or modification time): {again}",
                             path=str(partial))
    return base


def _file_stamp(path) -> str:
    """A file's size and modification time, as `extends_file` records them (a hard link's are its file's)."""
    st = os.stat(path)
    return f"{st.st_size} {st.st_mtime_ns}"


class StackedView:
    """Read access to an open stacked file (EmbeddingsReader's, and `--resume`'s)."""

    def __init__(self, f, path: str):
        import h5py

        from protrans_cli.io.h5 import local_data, local_link

        self.file = f
        self.path = path
        # (per_protein a group, not the (N, D) array: `embed --resume` met it as an AttributeError traceback)
        missing = [name for name in (PER_PROTEIN, *COLUMNS) if f.get(name, getclass=True) is not h5py.Dataset]
        if missing:
            raise InputError(f"a stacked embeddings file without its {', '.join(missing)} column(s): damaged, "
                             "or not written by protrans embed", path=path)
        # (the array and its columns are read as they are: a virtual dataset or external storage
        # in a file from elsewhere was read silently from whatever other file it names)
        for name in (PER_PROTEIN, *COLUMNS):
            local_link(f, name.encode("utf-8"))
            local_data(f, name.encode("utf-8"), f[name].id)
        self.data = f[PER_PROTEIN]
        self._rows: dict[str, int] | None = None
        self._index: tuple | None = None  # row_of's (sorted ids as UTF-8 bytes, their rows or None where in row order)
        self._checksums: np.ndarray | None = None  # facts' checksums column, as bytes
        self._columns: dict[str, np.ndarray] = {}
        # (checked here, once: another type was a traceback where it was first read, or read as it came)
        if self.data.ndim not in (2, 3) or self.data.dtype.kind not in "fiub":
            raise InputError(f"a stacked embeddings file whose per_protein is {a_or_an(str(self.data.dtype))} array "
                             f"of shape {self.data.shape}, not (N, D) or (N, n_layers, D) numbers: damaged, or not "
                             "written by protrans embed", path=path)
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
        """The ids in row order, each once (two rows of one id are refused: predict wrote both)."""
        return list(self.rows())

    def listed_ids(self) -> list[str]:
        """`ids()`, read a block at a time and refused twice as `check_unique` refuses them (a hash a
        protein), without `rows`' id -> row dict beside the list (about 110 bytes a protein more:
        knn --reference held it beside the vectors it needs)."""
        if self._rows is not None:
            return list(self._rows)
        ids: list[str] = []
        for start in range(0, len(self), BLOCK_ROWS):
            ids.extend(self._text("ids", np.s_[start:start + BLOCK_ROWS]))
        self.check_unique(ids)
        return ids

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
            ids = list(self._text("ids"))
            self._rows = {ident: i for i, ident in enumerate(ids)}
            if len(self._rows) != len(ids):
                seen: set[str] = set()
                twice = next(i for i in ids if i in seen or seen.add(i))
                raise InputError(f"protein {twice!r} has two rows: ids must be unique (damaged, or not written "
                                 "by protrans embed)", path=self.path)
        return self._rows

    def _utf8_blocks(self, name: str) -> list[np.ndarray]:
        """A text column as UTF-8 bytes (numpy's fixed width: a few bytes a protein, not a Python
        string's 50 or more), one array a block of rows."""
        return [np.array([t.encode("utf-8") for t in self._text(name, np.s_[start:start + BLOCK_ROWS])], dtype=bytes)
                for start in range(0, len(self), BLOCK_ROWS)]

    def index(self) -> tuple | None:
        """`row_of`'s index of the ids (built once, read a block at a time): (the ids as UTF-8
        bytes in one sorted array, their rows or None where that is row order); None where a long
        id (as wide a row for every id) made it `rows`' dict instead. Two rows of one id are
        refused as `rows` refuses them."""
        if self._index is None and self._rows is None:
            blocks = self._utf8_blocks("ids")
            if any(b.dtype.itemsize > 255 for b in blocks):
                self.rows()
            else:
                ids, order = (np.concatenate(blocks) if blocks else np.array([], dtype="S1")), None
                if not (ids[1:] > ids[:-1]).all():
                    order = np.argsort(ids, kind="stable")
                    ids = ids[order]
                    if (ids[1:] == ids[:-1]).any():
                        self.rows()  # (raises, naming the id)
                self._index = (ids, order)
        return self._index

    def row_of(self, ident: str) -> int | None:
        """The row of `ident`, None where the file has none: looked up in `index` (about 20 bytes
        a protein, 8 more where the rows are not in the order of their ids), not in `rows`' dict
        (about 180 bytes a protein, which fit paid for every protein of the file: UniRef50's 50 M
        in 9 GB); once built, without reading the file."""
        if self.index() is None:
            return self._rows.get(ident)
        ids, order = self._index
        # (a lone surrogate, a byte that is not UTF-8 as Python decodes one: bytes no stored id has)
        key = ident.encode("utf-8", "surrogatepass")
        at = int(np.searchsorted(ids, key))
        if at == len(ids) or ids[at] != key:
            return None
        return at if order is None else int(order[at])

    def sorted_ids(self):
        """The ids in sorted order (UTF-8's byte order is that of the code points), from `index`."""
        if self.index() is None:
            yield from sorted(self._rows)
        else:
            for ident in self._index[0]:
                yield ident.decode("utf-8")

    def facts(self, i: int) -> tuple[int | None, int | None, str | None]:
        """(length, truncated_from, checksum) of row `i`, None where `record` has no such attribute:
        from those three columns alone, the checksums held as bytes (`record`'s every column as
        Python strings held about 330 bytes a protein)."""
        if self._checksums is None:
            self._checksums = np.concatenate(self._utf8_blocks("checksums") or [np.array([], dtype="S1")])
        checksum = self._checksums[i]
        return (int(self.column("lengths")[i]) or None, int(self.column("truncated_from")[i]) or None,
                checksum.decode("utf-8") if checksum else None)

    def check_unique(self, ids: list[str] | None = None) -> None:
        """Refuse two rows of one id (as `rows` does) holding 8 bytes a protein, the id's hash, not
        every id as a string: for a caller that reads the file a slice of rows at a time (predict).
        Equal hashes are only a suspicion, settled by `rows` (of distinct ids: 1 in 10^5 for 50 M
        proteins). The hashes are filled into one array and sorted in place: a list of blocks,
        their concatenation and np.unique's copies held about 64 bytes a protein at once. `ids`:
        the ids of every row, where the caller has read them."""
        hashes = np.empty(len(self), dtype=np.int64)
        for start in range(0, len(self), BLOCK_ROWS):
            block = self._read("ids", np.s_[start:start + BLOCK_ROWS]) if ids is None else ids[start:start + BLOCK_ROWS]
            hashes[start:start + len(block)] = np.fromiter(map(hash, block), np.int64, len(block))
        hashes.sort()
        if len(hashes) > 1 and (hashes[1:] == hashes[:-1]).any():
            self.rows()  # (raises, naming the id, where two rows have one)

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

    def record(self, i: int, columns: dict) -> dict:
        """Row `i`'s attributes as the other layouts' datasets carry them (the optional ones
        only where they apply), from `columns`, a block's (`blocks`). A length of 0 or an empty
        checksum is what stack_file writes for one not recorded (`import-esm` without --fasta): no
        attribute, as in the other layouts (they were a `length` of 0 and a `checksum` of "", and
        `info --residues` counted 0 residues)."""
        get = (lambda name: columns[name][i])
        attrs = {"id": get("ids"), "header": get("headers")}
        length, checksum = int(get("lengths")), get("checksums")
        if length:
            attrs["length"] = length
        if checksum:
            attrs["checksum"] = checksum
        for attribute, column in (("truncated_from", "truncated_from"), ("chunks", "chunks")):
            value = int(get(column))
            if value:
                attrs[attribute] = value
        computed = get("computed")
        if computed:
            attrs["computed"] = computed
        return attrs

    def get(self, ident: str) -> np.ndarray:
        row = self.row_of(ident)
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


def stacking_failure(exc: BaseException, partial, kept: str | None = None) -> RuntimeFailure:
    """`kept`: where the proteins are (the partial file, and the finished file it extends)."""
    from protrans_cli.io.h5 import write_failure_reason

    # (HDF5's own message for a full disk, "... (file write failed: time = ..., error message =
    # 'No space left on device', ...", cut at its first line, left a parenthesis open)
    return RuntimeFailure(f"cannot write the stacked file ({write_failure_reason(exc)}); every protein is in "
                          f"{kept or partial}: {again_with_resume()} to write it again",
                          path=str(partial)[:-len(".partial")])

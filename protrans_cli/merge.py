"""`protrans merge`: several embed outputs of one model and settings into one file.

A proteome or UniRef split into parts (`seqkit split2 -p 100`) and embedded by a Slurm job array
or on several machines gives one file per part; fit and predict read one file. The parts must be
finished outputs of `protrans embed` written with the same model and settings (what `--resume`
compares); their layouts may differ, and the merged file takes the first one's unless asked for
another (`layout`). An id in two parts with the same sequence is kept once (the first part's);
with another sequence it is an error before anything is written. Nothing is computed: the
datasets are copied as they are (a stacked part is first written back into the grouped
structure), into OUTPUT.partial, which is renamed when complete and removed if not.

    summary = merge(["part_001.h5", "part_002.h5"], "all.h5")

What is held per protein while the parts are compared is two 16-byte digests (id, sequence).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protrans_cli.errors import InputError, UsageError
from protrans_cli.io.h5 import (KINDS, LAYOUTS, PER_PROTEIN, RESUME_ATTRS, RUN_ATTRS, EmbeddingsReader,
                                EmbeddingsWriter, _comparable, digest128, escape_key, partial_path, stored_proteins)

# What the writer records itself: its layout and kinds, and the failures and runs of the parts
_OWN_ATTRS = {"layout", "kinds", "kind", "storage_dtype", "failed", "runs"}
# Compared between the parts besides RESUME_ATTRS (the layout aside): every row depends on them
_ALSO_SAME = ("input_prefix", "embedding_dim")
# A protein without a sequence checksum. (numpy's "S16" items drop trailing NUL bytes: every
# digest is compared as numpy gives it back, _key(), and no checksum reads back as b"")
_NO_SUM = bytes(16)


@dataclass
class MergeSummary:
    proteins: int = 0       # in the merged file
    repeated: int = 0       # proteins of a part left out: their id and sequence were in an earlier part
    failed: dict = field(default_factory=dict)  # id -> why, of the proteins no part holds


@dataclass
class _Part:
    path: Path
    attrs: dict
    layout: str
    kinds: tuple
    ids: np.ndarray    # 16-byte digests of its ids ("S16"), in the order read
    sums: np.ndarray   # and of their sequence checksums (_NO_SUM: none recorded)


def merge(inputs, output, *, layout: str | None = None, force: bool = False,
          command_line: str | None = None) -> MergeSummary:
    """Merge the embed outputs `inputs` into `output` (see the module docstring). `layout`: the
    merged file's (default: the first part's); `force`: replace an existing `output`."""
    from protrans_cli import __version__
    from protrans_cli.io.files import output_directory

    paths, output = [Path(p) for p in inputs], Path(output)
    if not paths:
        raise UsageError("merge needs at least one embeddings file")
    if layout is not None and layout not in LAYOUTS:
        raise UsageError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    _check_paths(paths, output)
    output_directory(output)
    if output.exists() and not force:
        raise UsageError("exists: give --force to replace it", path=str(output))
    partial = partial_path(output)
    if partial.exists() and not force:
        raise UsageError(f"{partial.name} exists (a run into this output that did not finish): give --force to "
                         "replace it", path=str(output))
    parts = [_read_part(path) for path in paths]
    for part in parts[1:]:
        _check_same(parts[0], part)
    kinds, layout = parts[0].kinds, layout or parts[0].layout
    if layout == "flat" and len(kinds) != 1:
        raise UsageError(f"the parts hold {' and '.join(kinds)} embeddings; the flat layout holds one kind: "
                         "merge into --layout grouped")
    if layout == "stacked" and kinds != (PER_PROTEIN,):
        raise UsageError(f"the parts hold {' and '.join(kinds)} embeddings; the stacked layout holds per-protein "
                         "vectors only: merge into --layout grouped")
    repeats = _repeats(parts)  # (an id in two parts with other sequences: refused before anything is written)
    attrs = {k: v for k, v in parts[0].attrs.items() if k not in _OWN_ATTRS and k not in RUN_ATTRS}
    attrs.update(command_line=command_line or "protrans merge", protrans_version=__version__)
    if force:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    try:
        with EmbeddingsWriter(output, kinds=kinds, layout=layout, storage_dtype=parts[0].attrs["storage_dtype"],
                              attrs=attrs) as writer:
            for part, skip in zip(parts, repeats):
                _copy_part(writer, part, skip, output)
            writer.flush(failures=True)
            failed = dict(writer.failed)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()  # (nothing was computed: merging again costs what this did)
        raise
    total = sum(len(p.ids) for p in parts) - sum(len(s) for s in repeats)
    return MergeSummary(proteins=total, repeated=sum(len(s) for s in repeats), failed=failed)


def _check_paths(paths: list[Path], output: Path) -> None:
    seen: dict[Path, Path] = {}
    targets = {output.resolve(), partial_path(output).resolve()}
    for path in paths:
        if str(path).endswith(".partial"):
            raise UsageError("an unfinished embed run's file: finish it first (the same embed command with "
                             "--resume), then merge its output", path=str(path))
        if not path.is_file():
            raise InputError("no such file" if not path.exists() else "not a file", path=str(path))
        real = path.resolve()
        if real in targets:
            raise UsageError("is also the output: merge into a new file", path=str(path))
        if real in seen:
            raise UsageError(f"named twice (also as {seen[real]}): give each part once", path=str(path))
        seen[real] = path


def _read_part(path: Path) -> _Part:
    """A part's settings and the digests of its proteins' ids and sequences."""
    with EmbeddingsReader(path) as reader:
        attrs = dict(reader.attrs)
        if "layout" not in attrs or "kinds" not in attrs:
            raise InputError("not an output of protrans embed (no 'layout' or 'kinds' attribute; a file from "
                             "another tool?): merge reads embed's files only", path=str(path))
        kinds = tuple(k for k in KINDS if k in str(attrs["kinds"]).split(","))
        if reader.layout == "stacked":
            view = reader._stacked
            pairs = zip(view.ids(), view.column("checksums"))
        else:
            # (a truncated protein's checksum is its kept prefix's, as a stacked file records it)
            pairs = stored_proteins(reader._group(kinds[0]), prefixes=True)
        ids, sums = [], []
        for ident, checksum in pairs:
            ids.append(digest128(ident))
            sums.append(digest128(checksum) if checksum else _NO_SUM)
    return _Part(path, attrs, reader.layout, kinds, np.array(ids, dtype="S16"), np.array(sums, dtype="S16"))


def _check_same(first: _Part, other: _Part) -> None:
    """The settings `--resume` compares (the layout aside), equal in every part."""
    for key in (*[k for k in RESUME_ATTRS if k != "layout"], *_ALSO_SAME):
        a, b = first.attrs.get(key), other.attrs.get(key)
        if (a is None) != (b is None) or (a is not None and _comparable(a) != _comparable(b)):
            raise InputError(f"was written with {key}={_shown(b)}, {first.path} with {key}={_shown(a)}: the parts "
                             "of one merge come from one model with the same settings", path=str(other.path))


def _shown(value) -> str:
    return "none" if value is None else repr(_comparable(value))


def _repeats(parts: list[_Part]) -> list[set[str]]:
    """For each part, the ids to leave out: those already in an earlier part (or twice in the
    parts so far) with the same sequence checksum. The same id with another sequence, or without
    a checksum to compare, is an InputError naming both files."""
    ids = np.concatenate([p.ids for p in parts]) if parts else np.array([], dtype="S16")
    unique, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if not len(ids) or counts.max() == 1:
        return [set() for _ in parts]
    sums = np.concatenate([p.sums for p in parts])
    owner = np.repeat(np.arange(len(parts)), [len(p.ids) for p in parts])
    firsts = first[np.searchsorted(unique, ids)]  # each row's first row with its id
    later = np.flatnonzero(firsts != np.arange(len(ids)))
    repeats: list[set[str]] = [set() for _ in parts]
    wanted: dict[int, set[bytes]] = {}
    for row in later:
        wanted.setdefault(int(owner[row]), set()).add(bytes(ids[row]))
    names = {i: _names_of(parts[i], digests) for i, digests in wanted.items()}
    for row in later:
        index, earlier = int(owner[row]), int(firsts[row])
        ident = names[index][bytes(ids[row])]
        if sums[row] == b"" or sums[row] != sums[earlier]:
            what = "no sequence checksum to compare" if sums[row] == b"" or sums[earlier] == b"" \
                else "another sequence"
            where = parts[int(owner[earlier])].path
            raise InputError(f"protein {ident!r} is also in {where}, with {what}: an id names one protein",
                             path=str(parts[index].path))
        if index == int(owner[earlier]):  # (twice in one file: embed writes each id once)
            continue
        repeats[index].add(ident)
    return repeats


def _names_of(part: _Part, digests: set[bytes]) -> dict[bytes, str]:
    """digest -> id of the proteins of a part whose id digests are in `digests` (a second read)."""
    with EmbeddingsReader(part.path) as reader:
        if reader.layout == "stacked":
            names = reader._stacked.ids()
        else:
            names = [ident for ident, _ in stored_proteins(reader._group(part.kinds[0]), checksums=False)]
    return {d: ident for ident in names if (d := _key(digest128(ident))) in digests}


def _key(digest: bytes) -> bytes:
    """A digest as an "S16" array gives it back (without trailing NUL bytes)."""
    return digest.rstrip(b"\0")


def _copy_part(writer: EmbeddingsWriter, part: _Part, skip: set[str], output: Path) -> None:
    """Copy a part's proteins, but those in `skip`, into the writer's file."""
    source, layout, scratch = part.path, part.layout, None
    try:
        if layout == "stacked":  # written back into the grouped structure the copy reads
            from protrans_cli.io.stacked import unstack_file

            scratch = Path(tempfile.mkdtemp(prefix=".merge.", dir=output.parent))
            source, layout = scratch / "part.h5", "grouped"
            unstack_file(part.path, source)
        writer.ensure_room(os.path.getsize(source), what=f"the proteins of {part.path.name}")
        writer.copy_from(source, layout=layout, skip={escape_key(i).encode("utf-8") for i in skip})
        writer.flush()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

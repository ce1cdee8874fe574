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

What is held per protein is two 16-byte digests (id, sequence); ids are read a block at a time,
and stacked parts are merged by key as streams.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protrans_cli.errors import RESUME_WORDS, InputError, ProtransError, UsageError, expect_path, one_of, option
from protrans_cli.io.h5 import (KINDS, LAYOUTS, PER_PROTEIN, RESUME_ATTRS, RUN_ATTRS, EmbeddingsReader,
                                EmbeddingsWriter, _comparable, digest128, escape_key, output_free, partial_path,
                                remove_partial, same_weights, stored_proteins)

# What the writer records itself: its layout and kinds, and the failures and runs of the parts
_OWN_ATTRS = {"layout", "kinds", "kind", "storage_dtype", "failed", "truncated", "runs"}
# Compared between the parts besides RESUME_ATTRS (the layout aside): every row depends on them
_ALSO_SAME = ("input_prefix", "embedding_dim")
# Compared where both parts record it: `layers` counts from it (layer -1 of 33 hidden states is
# another layer than -1 of 34: two import-esm files without -m, of --repr_layers 32 and 33)
# `weights_fingerprint`: a local model directory's weights (no commit tells a model retrained there)
# (chains: a part from before --chains was embedded as chains="error" is)
_SAME_WHERE_RECORDED = ("num_hidden_states", "weights_fingerprint", "chains")
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
    from protrans_cli.io.files import checked_hdf5_output, hdf5_output_in_use, output_lock, refuse_other_format_name

    # From Python: one file as a bare path (it was read letter by letter: "e: not a file"); an
    # output or a force that is no path or bool (a TypeError, or "no" taken as true)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)  # (a generator: read once)
    if not all(isinstance(p, (str, os.PathLike)) for p in inputs):
        raise UsageError(f"merge: inputs must be paths of embeddings files, got {inputs!r:.60}")
    expect_path(output, "merge: output")
    if not isinstance(force, bool):
        raise UsageError(f"merge: force must be a bool, got {type(force).__name__} {force!r:.60}")
    paths, output = [Path(p) for p in inputs], Path(output)
    if not paths:
        raise UsageError("merge needs at least one embeddings file")
    if layout is not None:
        one_of(layout, LAYOUTS, "--layout", keyword="layout")
    # (embed's checks of its output: a pipe or device is not renamed over, the user's own link
    # is followed, a read-only file is refused)
    output = checked_hdf5_output(output, "the merged embeddings")
    _check_paths(paths, output)
    refuse_other_format_name(output, "-o", "the merged embeddings", keyword="output")
    # Held from the "exists" check to the final rename, as embed holds it: a merge with --force
    # into the output of an embed (or merge) running now removed its partial file, and both said
    # they had written the output.
    with output_lock(output, hdf5_output_in_use()):
        return _merge_locked(paths, output, layout, force, command_line)


def _merge_locked(paths: list[Path], output: Path, layout: str | None, force: bool,
                  command_line: str | None) -> MergeSummary:
    from protrans_cli import __version__

    partial = output_free(output, force, "embed or merge")
    parts = [_read_part(path) for path in paths]
    limit = _unrecorded_limit(parts)
    for part in parts[1:]:
        _check_same(parts[0], part, limit)
    _check_parts_of_one_input(parts)
    kinds, layout = parts[0].kinds, layout or parts[0].layout
    if layout == "flat" and len(kinds) != 1:
        raise UsageError(f"the parts hold {' and '.join(kinds)} embeddings; the flat layout holds one kind: "
                         "merge into " + option("--layout grouped", "layout='grouped'"))
    if layout == "stacked" and kinds != (PER_PROTEIN,):
        raise UsageError(f"the parts hold {' and '.join(kinds)} embeddings; the stacked layout holds per-protein "
                         "vectors only: merge into " + option("--layout grouped", "layout='grouped'"))
    repeats = _repeats(parts)  # (an id in two parts with other sequences: refused before anything is written)
    attrs = {k: v for k, v in parts[0].attrs.items() if k not in _OWN_ATTRS and k not in RUN_ATTRS}
    attrs.update(_shared_run_attrs(parts))
    if any(part.attrs.get("weights_fingerprint") is None for part in parts):
        attrs.pop("weights_fingerprint", None)  # (a part from before it: its weights are not known)
    # (a hub commit recorded by one part, with none by another: the one known, so that a later merge
    # or --resume still tells another commit)
    attrs["commit"] = next((c for part in parts if (c := _comparable(part.attrs.get("commit")))), attrs.get("commit"))
    if attrs["commit"] is None:
        del attrs["commit"]
    if limit is not None:  # (the limit every row was computed within: the parts that record it)
        attrs["max_length"] = limit
    if "part" in attrs:  # (the merged file is the whole input's, as one run over it records it)
        attrs["part"] = ""
    attrs.update(command_line=command_line or "protrans merge", protrans_version=__version__)
    if force:
        remove_partial(partial)
    repeated = sum(len(s) for s in repeats)
    total = sum(len(p.ids) for p in parts) - repeated
    if layout == "stacked" and all(p.layout == "stacked" for p in parts):
        failed = _merge_stacked(parts, repeats, total, output, attrs)
        return MergeSummary(proteins=total, repeated=repeated, failed=failed)
    try:
        with EmbeddingsWriter(output, kinds=kinds, layout=layout, storage_dtype=parts[0].attrs["storage_dtype"],
                              attrs=attrs) as writer:
            for part, skip in zip(parts, repeats):
                _copy_part(writer, part, skip, output)
            writer.flush(failures=True)
            failed = dict(writer.failed)
    except BaseException as exc:
        remove_partial(partial)  # (nothing was computed: merging again costs what this did)
        if isinstance(exc, ProtransError) and any(word in exc.message for word in RESUME_WORDS):
            # (the writer's and the stacking's advice is embed's: the partial file, --resume)
            raise type(exc)(_merge_advice(exc.message), path=str(output)) from None
        raise
    return MergeSummary(proteins=total, repeated=repeated, failed=failed)


def _shared_run_attrs(parts) -> dict:
    """The last run's settings (`device`, `compute_dtype`, `packing`, ...) the parts agree on, as
    one run over the whole input records them (a protein's `computed` attribute is read against
    `device` and `compute_dtype`); one the parts differ in is left out (each part's are in `runs`)."""
    shared = {}
    for key in RUN_ATTRS:
        if key in ("command_line", "protrans_version"):  # (the merge's own)
            continue
        values = [part.attrs.get(key) for part in parts]
        if values[0] is not None and all(_equal(value, values[0]) for value in values[1:]):
            shared[key] = values[0]
    return shared


def _equal(a, b) -> bool:
    return bool(np.array_equal(a, b)) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else a == b


def _merge_advice(message: str) -> str:
    """A failure's message as merge says it: what failed, without embed's advice (what was
    computed is kept in OUT.partial, run the same command with --resume): merge has no
    --resume, and it removed its partial file."""
    kept = []
    for clause in message.split("; "):
        if any(word in clause for word in (*RESUME_WORDS, ".partial")):
            break
        kept.append(clause)
    remedy = "raise the limit" if "file-size limit" in message else "free some space (or remove the cause)"
    return "; ".join(kept) + f"; nothing was kept: {remedy} and run the merge again"


def _check_paths(paths: list[Path], output: Path) -> None:
    from protrans_cli.io.files import directory_kind, missing_file

    seen: dict[Path, Path] = {}
    targets = {output.resolve(), partial_path(output).resolve()}
    for path in paths:
        if str(path) == "-":  # (it was "-: no such file", exit 1; fit and predict say this, exit 2)
            raise UsageError("an HDF5 file is read in place, not from stdin ('-'): give each part as a file")
        if str(path).endswith(".partial"):
            raise UsageError("an unfinished embed run's file: finish it first (" + option(
                "the same embed command with --resume", "the same embed call with resume=True") + "), then merge its "
                "output", path=str(path))
        if not path.is_file():
            if path.is_dir():  # (a head or model folder was "not a file" alone, as any other folder)
                raise InputError("is a directory, expected an HDF5 file" + directory_kind(path), path=str(path))
            raise InputError(missing_file(path) if not path.exists() else "not a file", path=str(path))
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
        if not kinds:  # (it was an IndexError traceback)
            raise InputError(f"its 'kinds' attribute ({_shown(attrs['kinds'])}) names neither per_residue nor "
                             "per_protein: damaged, or not written by protrans embed", path=str(path))
        if reader.layout == "stacked":  # (a block of the columns at a time)
            from protrans_cli.io.stacked import stacked_done

            pairs = (pair for ids, sums in stacked_done(reader.file) for pair in zip(ids, sums))
        else:
            # (a truncated protein's checksum is its kept prefix's, as a stacked file records it)
            pairs = stored_proteins(reader._group(kinds[0]), prefixes=True)
        ids, sums = [], []  # (as arrays of 4096: a list of bytes objects took about 110 bytes a protein)
        for block in iter(lambda: list(itertools.islice(pairs, 4096)), []):
            ids.append(np.array([digest128(ident) for ident, _ in block], dtype="S16"))
            sums.append(np.array([digest128(c) if c else _NO_SUM for _, c in block], dtype="S16"))
    return _Part(path, attrs, reader.layout, kinds, np.concatenate(ids or [np.empty(0, "S16")]),
                 np.concatenate(sums or [np.empty(0, "S16")]))


def _unrecorded_limit(parts: list[_Part]) -> int | None:
    """The `max_length` of the parts that record one, where others record 0 and hold only proteins
    within it, whole; else None. Versions before 2026-11-29 recorded --max-length as given, 0 when
    it was not (the model's own limit, which later versions record: `embed --resume` takes the two
    for one run); such a part beside a later one of the same model was refused, "max_length=1022
    ... max_length=0". A part of 0 whose proteins are all at most N residues and none truncated or
    chunked holds the rows a run at N writes."""
    from protrans_cli.export import _residue_counts

    recorded = [_comparable(p.attrs["max_length"]) for p in parts if p.attrs.get("max_length") is not None]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in recorded):
        return None  # (text or an array, another writer's: _check_same names it; int() was a traceback)
    values = set(recorded)
    if len(values) != 2 or 0 not in values:
        return None
    limit = max(values)
    for part in parts:
        if part.attrs.get("max_length") is None or _comparable(part.attrs["max_length"]) != 0:
            continue
        with EmbeddingsReader(part.path) as reader:
            counts = _residue_counts(reader)
        if counts.get("longest", 0) > limit or counts.get("truncated") or counts.get("chunked"):
            return None
    return limit


def _check_same(first: _Part, other: _Part, limit: int | None = None) -> None:
    """The settings `--resume` compares (the layout aside), equal in every part. `limit`: the
    `max_length` that a part recording 0 is taken to have (_unrecorded_limit)."""
    from protrans_cli.embed import same_commit, same_model

    for key in (*[k for k in RESUME_ATTRS if k not in ("layout", "part", *_SAME_WHERE_RECORDED)], *_ALSO_SAME,
                *_SAME_WHERE_RECORDED):
        a, b = first.attrs.get(key), other.attrs.get(key)
        if key in _SAME_WHERE_RECORDED and (a is None or b is None):
            continue  # (a file from before the attribute)
        if key == "max_length" and limit is not None and a is not None and b is not None \
                and {int(_comparable(a)), int(_comparable(b))} <= {0, limit}:
            continue  # (a part of an earlier version, which recorded 0 for the model's own limit)
        if key == "model" and a is not None and b is not None and same_model(str(_comparable(a)),
                                                                            str(_comparable(b))):
            continue  # (as --resume compares it: a short name and its hub id name one model)
        if key == "model" and same_weights(first.attrs, other.attrs):
            continue  # (one model directory's weights at another path: moved or copied between the runs)
        if key == "commit" and same_commit(_comparable(a), _comparable(b)):
            # (as --resume compares it: a file that records none, import-esm's, is not another
            # commit; an imported part beside embed's of that hub model was refused)
            continue
        if key == "weights_fingerprint" and _comparable(a) != _comparable(b):
            raise InputError(f"was written with other weights of the model {_shown(other.attrs.get('model'))} than "
                             f"{first.path} (weights_fingerprint {_shown(b)} and {_shown(a)}: the model directory was "
                             "retrained or replaced between the runs): the parts of one merge come from one model",
                             path=str(other.path))
        if (a is None) != (b is None) or (a is not None and _comparable(a) != _comparable(b)):
            raise InputError(f"was written with {key}={_shown(b)}, {first.path} with {key}={_shown(a)}: the parts "
                             "of one merge come from one model with the same settings", path=str(other.path))


EMBEDS_PART = "embed's part"  # (EmbedOptions.part, "K/N": what `embed --part` sets)


def _check_parts_of_one_input(parts: list[_Part]) -> None:
    """Parts written with `embed --part K/N`: each K once, one N, every K from 1 to N; a part of
    the whole input (no --part) is not merged with them. (Parts of a split FASTA record none.)"""
    marked = [(part, str(_comparable(part.attrs.get("part")) or "")) for part in parts]
    given = [(part, spec) for part, spec in marked if spec]
    if not given:
        return
    if len(given) != len(marked):
        whole = next(part for part, spec in marked if not spec)
        raise InputError(f"holds the whole input, {given[0][0].path} its part {given[0][1]} "
                         f"({option('embed --part', EMBEDS_PART)}): "
                         "merge the parts of one input", path=str(whole.path))
    def input_of(part: _Part) -> str:
        return str(_comparable(part.attrs.get("input_digest")) or "")

    (first, first_spec) = given[0]
    for part, spec in given[1:]:
        if input_of(part) != input_of(first):
            raise InputError(f"part {spec} was embedded from another input than part {first_spec} ({first.path}): "
                             "their inputs' ids and sequences differ; embed every part from one FASTA",
                             path=str(part.path))
    seen: dict[int, Path] = {}
    total = None
    for part, spec in given:
        # (embed records "K/N" as it checked it; another tool's or a hand-edited "2 of 4" or "2" was
        # a ValueError traceback, and "0/2" or "3/2" was taken for a part and reported missing)
        found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
        if not found or not 1 <= int(found.group(1)) <= int(found.group(2)):
            raise InputError(f"its 'part' attribute ({spec!r}) is not K/N, part K of N (1 <= K <= N), as "
                             f"{option('embed --part', EMBEDS_PART)} records it: damaged, or not written by "
                             "protrans embed", path=str(part.path))
        k, n = int(found.group(1)), int(found.group(2))
        if total is not None and n != total:
            raise InputError(f"is part {spec}, {given[0][0].path} part {given[0][1]}: parts of one split (one N)",
                             path=str(part.path))
        total = n
        if k in seen:
            raise InputError(f"is part {spec} of the input, and so is {seen[k]}: each part once", path=str(part.path))
        seen[k] = part.path
    missing = [k for k in range(1, total + 1) if k not in seen]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        split = option(f"embed --part K/{total}", f"embed with part='K/{total}'")
        raise InputError(f"part(s) {shown} of {total} are missing ({split}): the merged file "
                         "would lack their proteins; merge every part", path=str(given[0][0].path))


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
            from protrans_cli.io.files import make_temporary
            from protrans_cli.io.stacked import unstack_file

            # (make_temporary's name, `.merge.<host>.<pid>-XXXX`: the next merge there removes one a
            # SIGKILLed merge left; a plain mkdtemp's stayed for ever, as large as the part unstacked)
            scratch = make_temporary(output.parent, ".merge.", "", folder=True)
            source, layout = scratch / "part.h5", "grouped"
            unstack_file(part.path, source)
        writer.ensure_room(os.path.getsize(source), what=f"the proteins of {part.path.name}")
        writer.copy_from(source, layout=layout, skip={escape_key(i).encode("utf-8") for i in skip})
        writer.flush()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _merge_stacked(parts: list[_Part], repeats: list[set[str]], n: int, output: Path, attrs: dict) -> dict:
    """Stacked parts into a stacked file of `n` rows, rows and columns copied a block at a time in key order
    (each part's rows are in that order already): no dataset per protein on the way (written
    back, copied and stacked again, a protein cost about 300 us). Written under a hidden name,
    synced and renamed (io/stacked.py's `_written_as`). Returns the `failed` entries."""
    import json

    from protrans_cli.io import disk
    from protrans_cli.io.h5 import (_attr_value, _same_run, failed_attr, h5_file, recorded_runs,
                                    run_attributes, truncated_attr)
    from protrans_cli.io.stacked import (COLUMNS, COUNT_COLUMNS, StackedView, _rows_per_block, _written_as,
                                         create_stacked, keyed_rows)

    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(h5_file(part.path, "r")) for part in parts]
        views = [StackedView(f, str(part.path)) for f, part in zip(files, parts)]
        shape, dtype = views[0].data.shape[1:], views[0].data.dtype
        for view, part in zip(views, parts):
            if view.data.shape[1:] != shape or view.data.dtype != dtype:
                raise InputError(f"holds vectors of shape {view.data.shape[1:]} ({view.data.dtype}), "
                                 f"{parts[0].path} {shape} ({dtype}): not one embedding's", path=str(part.path))
        # the parts' rows merged by key (each part's are in key order), a block at a time
        merged = heapq.merge(*(keyed_rows(view, index, skip)
                               for index, (view, skip) in enumerate(zip(views, repeats))))
        failed: dict[str, str] = {}
        truncated: dict[str, int] = {}  # (as the writer merges them: every part's)
        runs: list[dict] = []
        for f, part in zip(files, parts):
            failed.update(failed_attr(f.attrs.get("failed"), str(part.path)))
            truncated.update(truncated_attr(f.attrs.get("truncated")))
            for run in recorded_runs(f):
                if not any(_same_run(run, known) for known in runs):
                    runs.append(run)
        if failed:  # a protein that failed in one part and is in another is done
            present = np.concatenate([p.ids for p in parts])
            held = np.isin(np.array([digest128(i) for i in failed], dtype="S16"), present)
            failed = {ident: why for ident, why, done in zip(list(failed), failed.values(), held) if not done}
        file_attrs = run_attributes(attrs, kinds=(PER_PROTEIN,), layout="stacked", storage_dtype=str(dtype))
        runs.append({k: file_attrs[k] for k in RUN_ATTRS if file_attrs.get(k) is not None})
        row_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        with _written_as(output, "merging", parts[0].path) as temporary:
            disk.ensure_room(temporary, n * (row_bytes + 256), "free some space and run the merge again",
                             shown=output, what="the merged file")
            with h5_file(temporary, "x") as out:
                for key, value in file_attrs.items():
                    if value is not None:
                        out.attrs[key] = _attr_value(value)
                out.attrs["runs"] = json.dumps(runs, sort_keys=True)
                out.attrs["failed"] = json.dumps(failed, sort_keys=True)
                if truncated or _comparable(file_attrs.get("long_policy")) == "truncate":
                    out.attrs["truncated"] = json.dumps(truncated, sort_keys=True)
                data, columns = create_stacked(out, n, shape, dtype)
                step = _rows_per_block(row_bytes)
                for start in range(0, n, step):
                    end = min(n, start + step)
                    block = list(itertools.islice(merged, end - start))
                    owner = np.array([b[1] for b in block], dtype=np.int64)
                    local = np.array([b[2] for b in block], dtype=np.int64)
                    rows = np.empty((end - start, *shape), dtype=dtype)
                    values = {name: np.empty(end - start, dtype=np.int64 if name in COUNT_COLUMNS else object)
                              for name in COLUMNS}
                    for index in np.unique(owner):
                        at = np.flatnonzero(owner == index)  # this part's rows of the block,
                        wanted = local[at]                   # in its own (key) order
                        first, last = int(wanted[0]), int(wanted[-1]) + 1
                        rows[at] = views[index].data[first:last][wanted - first]
                        for name in COLUMNS:
                            values[name][at] = views[index]._read(name, np.s_[first:last])[wanted - first]
                    data[start:end] = rows
                    for name, dataset in columns.items():
                        dataset[start:end] = values[name] if name in COUNT_COLUMNS else list(values[name])
                out.flush()
    return failed

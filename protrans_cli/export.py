"""An embeddings file as a plain table or NumPy arrays (`protrans export`), and what a file
holds (`protrans info`).

HDF5 is what embed writes; R, spreadsheets, scikit-learn scripts and colleagues without h5py
want a table or an .npz (bio_embeddings' users asked for "a CSV from the h5" from the start).
`export` writes one kind and one layer of any layout, in the file's key order or in the order
of an id list or FASTA (which also selects proteins and, for a FASTA, checks that each
embedding is of that sequence); nothing is computed, and the output is written whole or not at
all. Formats:

- TSV/CSV: per protein `id, dim_0 .. dim_{D-1}`; per residue `id, position[, residue], dim_...`
  (position 1-based; the residue column when a FASTA gives the sequences; a file of complexes,
  embed --chains linker/separate, adds `chain, chain_position`, both 1-based). Numbers are written
  with the digits that give back the stored value exactly (9 for float32, 5 for float16)
  unless `digits` says fewer.
- NPZ (numpy.load, no pickle): `ids` (N,), `embeddings` (N, D) per protein or (sum of
  lengths, D) per residue with `offsets` (N + 1,) and `lengths` (N,): protein i is
  `embeddings[offsets[i]:offsets[i + 1]]`; `metadata`, a JSON text of where the arrays came
  from. Written a protein at a time, so memory stays at one protein whatever the file's size.
  A file of complexes (embed --chains linker/separate) adds `chain_counts` (N,) and `chains`
  (sum of chain_counts,): protein i's chain lengths are `chains[c[i]:c[i + 1]]`, c the cumulative
  sum of chain_counts starting at 0 (a protein of one chain: one count, its residues).

- esm (`--format esm`): a folder of fair-esm `esm-extract` files, one `<id>.pt` a protein
  holding `{"label": header line, "representations": {layer: (L, D)}, "mean_representations":
  {layer: (D,)}}` as float32 tensors (`bos_representations` where embed pooled the cls token),
  layers numbered as esm-extract numbers them (0 the embedding layer .. N the last), for the
  scripts and tools written around esm-extract's output. Per residue and per protein by
  default (esm-extract's `--include mean per_tok`). The file is named after the id (escaped as
  HDF5 keys are: `/` as %2F; a leading `.` too), not the whole header line as esm-extract does (a header with a
  `/` made it write into folders). The folder is written beside its name and renamed into
  place when complete; `import-esm` reads it back. It has no chain breaks: a complex's rows are
  written as they stand, and a note says so once.

A `predict --probabilities` file (a group per output of (L, C) probabilities) exports the same
way: a row a residue, `id, position[, chain, chain_position], <output>:<class> ...`, or an .npz with an
array per output (and `chain_counts`/`chains` where its datasets carry `chains`: complexes).

`info` reads the file's attributes, counts its proteins from their names and opens one dataset
for the dimension and dtype, so it answers at once for a file of millions of proteins; the
residue counts (`residues=True`) read every protein's length (and count the complexes, whose
`chains` attribute that pass reads).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protrans_cli import console
from protrans_cli.errors import (InputError, RuntimeFailure, UsageError, brief, brief_repr, expect_path, one_of,
                                 option, type_problem)

FORMATS = ("tsv", "csv", "npz", "esm")
_SUFFIXES = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".npz": "npz"}
# significant digits that give back every value of the dtype exactly
ROUND_TRIP_DIGITS = {"float16": 5, "float32": 9, "float64": 17}


@dataclass
class Exported:
    """What `export` wrote."""

    proteins: int
    rows: int        # table rows (proteins or residues)
    kind: str        # per_protein or per_residue
    dim: int
    format: str


def _output(output) -> str:
    """The output and its name, as the message's reader gives them: "-o x.h5", "output x.h5"."""
    return option(f"-o {output}", f"output {output}")


def _esm_format() -> str:
    return option("--format esm", "fmt='esm'")


def _by_predict() -> str:
    return option("predict --probabilities'", "predict's")


def output_format(output, fmt: str | None = None) -> str:
    """The format to write: `fmt`, else from the output's name (.tsv/.txt, .csv, .npz, each but
    .npz optionally compressed: .tsv.gz), else TSV (stdout)."""
    from protrans_cli.io.files import bare_name

    to_stdout = output is None or str(output) == "-"
    name = "" if to_stdout else Path(str(output)).name.lower()
    bare = bare_name(name)  # (less .gz, .bz2, .xz, .zst or .zstd: what the writer compresses)
    compressed = name[len(bare):]
    if fmt is not None:
        one_of(fmt, FORMATS, "--format", keyword="fmt")
        chosen = fmt
    elif to_stdout:
        chosen = "tsv"
    else:
        chosen = _SUFFIXES.get(Path(bare).suffix)
        if chosen is None:
            raise UsageError(f"{_output(output)}: name the file .tsv, .csv or .npz (.tsv.gz compresses), or say the "
                             f"format with {option('--format', 'fmt')} ({_esm_format()}: a folder of esm-extract's "
                             ".pt files)")
    if chosen == "esm" and to_stdout:
        raise UsageError(f"{_esm_format()} writes a folder of .pt files: give {option('-o FOLDER', 'output a folder')}")
    if chosen == "npz":
        if to_stdout:
            raise UsageError(f"an .npz is written to a file: give {option('-o FILE.npz', 'output a file name')}")
        if compressed:
            raise UsageError(f"{_output(output)}: an .npz is a zip archive of its own: leave out {compressed}")
    return chosen


def read_id_list(path) -> tuple[list[str], dict[str, str] | None]:
    """(ids, id -> sequence or None) of a FASTA file (its ids and sequences) or of a list of ids,
    one per line (the first word of each, UTF-8 else latin-1 as a FASTA header's id; blank lines
    and lines starting with # skipped), in their order; an id given twice is refused. A FASTA of headers alone (`>id` lines, an id
    list written as headers) is a list of ids: it has no sequences to check."""
    import io

    from protrans_cli.io.fasta import BOM, begins_fasta, decode_word, parse_fasta
    from protrans_cli.io.files import BINARY_KIND, display_name, is_utf16, kind_refusal, open_input, utf16_text

    name = display_name(path)
    with open_input(path) as stream:
        head = stream.peek(4096)[:4096] if hasattr(stream, "peek") else b""
        if is_utf16(head):
            # UTF-16 (PowerShell's `>`, Notepad's "Unicode"), read whole as the label and variants
            # readers read it: its ids were 'e\x00', '\x00c\x00' ..., which no file holds
            stream = io.BufferedReader(io.BytesIO(utf16_text(stream.read(), name).encode("utf-8")))
            head = stream.peek(4096)[:4096]
        # (as the FASTA reader skips them: a byte-order mark on a line of its own, then blank
        # lines; such a FASTA was read as a list of ids, its headers and sequences for ids)
        is_fasta = begins_fasta(head)
        if is_fasta:
            # (parsed from this stream: stdin opened a second time had lost what a decompressor
            # or a short first read of a pipe had taken from it, and a gzipped FASTA on stdin
            # "held no FASTA record")
            sequences: dict[str, str] = {}
            ids, lines = [], []
            for record in parse_fasta(stream, name):
                ids.append(record.id)
                lines.append(record.line)
                sequences.setdefault(record.id, record.sequence)
        else:
            if problem := _not_text(head) or _fastq(head):
                raise InputError(problem, path=name)
            ids, lines = [], []
            for number, raw in enumerate(stream, 1):
                if number == 1:  # (a byte-order mark from a Windows editor was part of the first id)
                    raw = raw.removeprefix(BOM)
                if b"\r" in raw.rstrip(b"\r\n"):
                    # (the whole file one line: its first id written, every other left out, exit 0)
                    raise InputError("a carriage return inside the line: lines that end in CR alone (old Mac line "
                                     "endings) are not read; convert them first (tr '\\r' '\\n')",
                                     path=name, line=number)
                if b"\0" in raw:  # (beyond the first bytes _not_text looked at)
                    raise InputError(kind_refusal(BINARY_KIND, _IDS), path=name, line=number)
                words = raw.split()
                if not words or words[0].startswith(b"#"):
                    continue
                # UTF-8, else latin-1, as the FASTA reader reads a header's id: a list in latin-1 was
                # refused ("not UTF-8 text") where a FASTA of the same ids selected the proteins
                ids.append(decode_word(words[0]))
                lines.append(number)
            _refuse_twice(ids, name, lines)
            if not ids:
                raise InputError("holds no id: a FASTA file, or one id a line", path=name)
            return ids, None
    _refuse_twice(ids, name, lines)
    if not any(sequences.values()):  # headers alone: their checksums were "another sequence"
        return ids, None
    return ids, sequences


_IDS = "a list of ids or a FASTA file"


def _fastq(head: bytes) -> str | None:
    """What an --ids file is where its first lines are a FASTQ record ('@' header, letters, '+'
    line), as the FASTA reader says; None otherwise. (Read as one id a line, its reads' names,
    bases and '+' lines were ids the file did not hold: "first: @r1, MKTAY, +".)"""
    from protrans_cli.io.fasta import look_alike
    from protrans_cli.io.files import kind_refusal

    lines = [line for line in head.splitlines() if line.strip()][:3]
    if len(lines) == 3 and lines[0].startswith(b"@") and lines[2].startswith(b"+"):
        if hint := look_alike(lines[0], tables=False):
            return kind_refusal(hint, _IDS)
    return None


def _not_text(head: bytes) -> str | None:
    """What an --ids file is where its first bytes say it holds no ids (an embeddings file, an
    archive, any other binary file), as the label and variants readers say; None for text. (A
    file of NULs was one 'id', echoed whole in the error: 300 MB of them ran out of memory.)"""
    from protrans_cli.io.files import binary_kind, kind_refusal

    kind = binary_kind(head)
    return kind and kind_refusal(kind, _IDS)


def _refuse_twice(ids: list[str], name: str, lines: list[int]) -> None:
    seen: dict[str, int] = {}
    for ident, line in zip(ids, lines):
        if ident in seen:
            raise InputError(f"id {brief_repr(ident)} is given twice (first at line {seen[ident]}): each protein is "
                             "written once", path=name, line=line)
        seen[ident] = line


def _chosen_kind(reader, kind: str | None) -> str:
    from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE

    if kind is None:
        return PER_PROTEIN if PER_PROTEIN in reader.kinds or PER_RESIDUE not in reader.kinds else PER_RESIDUE
    if kind == PER_RESIDUE and kind not in reader.kinds:
        raise InputError("holds per-protein vectors only: per-residue rows are not in it (embed with "
                         f"{option('--per-residue', 'per_residue=True')})", path=reader.path)
    return kind


def _layer_index(reader, shape: tuple, kind: str, layer: int) -> int | None:
    """Where `layer` lies on the file's layer axis (None: one layer stored, no axis), from the
    first protein's array `shape`. In a file that records no layer numbers (another tool's)
    `layer` indexes the layer axis, and must exist there; an array without one holds one layer
    (-1 or 0), as `fit` reads such files (an index past the axis was an IndexError traceback, and
    any --layer on one layer was taken silently)."""
    from protrans_cli.heads.data import stored_layer_index
    from protrans_cli.io.h5 import PER_PROTEIN

    base = 1 if kind == PER_PROTEIN else 2
    if len(shape) not in (base, base + 1):
        raise InputError(f"holds an array of shape {'x'.join(map(str, shape)) or 'scalar'} where "
                         f"{'(D,) vectors' if base == 1 else '(L, D) rows'} are read (not embeddings of that kind)",
                         path=reader.path)
    layered = len(shape) == base + 1
    if "layers" not in reader.attrs:
        if layered and base == 1:
            raise InputError(f"holds {'x'.join(map(str, shape))} arrays where per-protein (D,) vectors are read, "
                             "and no `layers` attribute says their first axis is layers", path=reader.path)
        if layered and not -shape[0] <= layer < shape[0]:
            raise InputError(f"holds {shape[0]} layers on its arrays' first axis (the file records no layer "
                             f"numbers: {option('--layer', 'layer')} indexes that axis, {-shape[0]} to "
                             f"{shape[0] - 1}), not layer {layer}",
                             path=reader.path)
        if not layered and layer not in (-1, 0):
            raise InputError(f"holds one layer (no layer axis, no layer numbers recorded), not layer {layer}",
                             path=reader.path)
        return layer if layered else None
    index = stored_layer_index(reader, layer)  # (one layer stored: the one asked for, or an error naming it)
    return index if layered else None


def export(path, output="-", *, kind: str | None = None, layer: int | None = None, ids=None, fmt: str | None = None,
           digits: int | None = None, all_layers: bool = False) -> Exported:
    """Write one kind (`per_protein`, `per_residue`; None: per-protein where the file has it) and
    one layer of the embeddings file `path` to `output` as TSV, CSV or NPZ (module docstring).
    `ids`: a FASTA or id-list file whose proteins, in its order, are written (each must be in
    the file; a FASTA's sequences must be the embedded ones). A per-protein export of a file of
    per-residue rows only writes each protein's mean over its residues (as embed pools).
    `all_layers`: every layer the file stores, into an .npz whose `embeddings` gain a layer axis
    after the protein (or residue) axis, in the file's order (`metadata["layers"]`). `layer`
    None is the last (-1); given, -1 too, it is refused beside `all_layers` and for a probabilities
    file (the CLI passes --layer only where it was given)."""
    from protrans_cli.io.files import atomic_output, input_named_by, output_directory
    from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader

    # From Python: a list of files was "['x.h5']: no such file", layer="-1" a TypeError traceback
    expect_path(path, "export: path", " (one embeddings file)", "; export each file in its own call")
    for name, value in (("output", output), ("ids", ids)):
        if value is not None:
            expect_path(value, f"export: {name}")
    for name, value, wanted in (("layer", layer, "int | None"), ("digits", digits, "int | None"),
                                ("all_layers", all_layers, "bool")):
        if problem := type_problem(wanted, value):
            raise UsageError(f"export: {name} must be {problem}, got {type(value).__name__} {value!r:.60}")
    if kind is not None:  # (no flag: --per-protein and --per-residue set it)
        one_of(kind, (PER_PROTEIN, PER_RESIDUE), "kind")
    # (given or not, not -1 or not: `--all-layers --layer -1` was taken without a word)
    layer_given, layer = layer is not None, -1 if layer is None else layer
    chosen_format = output_format(output, fmt)
    if digits is not None and not 1 <= digits <= 17:
        raise UsageError(f"{option('--digits', 'digits')} must be between 1 and 17, got {digits}")
    if digits is not None and chosen_format in ("npz", "esm"):
        raise UsageError(f"{option('--digits', 'digits')} rounds the numbers of a table: "
                         + ("an .npz keeps the stored values" if chosen_format == "npz" else
                            "esm-extract's .pt files keep the stored values (as float32)"))
    all_given, layer_named = option("--all-layers", "all_layers=True"), option("--layer", "layer")
    if all_layers and chosen_format not in ("npz", "esm"):
        raise UsageError(f"{all_given} writes an .npz or esm-extract's .pt files (a table holds one layer: "
                         f"choose it with {layer_named})")
    if all_layers and layer_given:
        raise UsageError(f"{all_given} writes every stored layer: leave out {layer_named}")
    if chosen_format == "esm":
        output = _esm_folder(output)
    elif output is not None and str(output) != "-" and os.path.isdir(str(output)):
        raise UsageError(f"{_output(output)}: is a folder: a {chosen_format} output needs a file name ({_esm_format()} "
                         "writes a folder of .pt files)")
    if output is not None and str(output) != "-":
        inputs = [path] + ([ids] if ids is not None else [])
        if source := input_named_by(output, inputs):
            raise UsageError(f"{_output(output)} is also an input: writing it would replace {source} (choose another "
                             "name)")
        output_directory(output)
    if str(path) != "-" and os.path.isfile(str(path)) and (other := _other_output(str(path))) is not None:
        if other["layout"] == "probabilities":
            if chosen_format == "esm":
                raise UsageError(f"{path} holds {_by_predict()} probabilities: esm-extract's .pt files hold "
                                 "embeddings (write a table or an .npz)")
            if kind is not None or layer_given or all_layers:
                raise UsageError(f"{path} holds {_by_predict()} per-residue probabilities: " + option(
                    "--per-protein, --per-residue, --layer and --all-layers are", "kind, layer and all_layers are")
                    + " for embeddings files")
            return _export_probabilities(path, output, other, chosen_format, ids, digits)
        raise InputError(f"holds the output of {other['written_by']} ({other['layout']}), not embeddings: "
                         "export writes embeddings and probabilities files (read this one with h5py: "
                         "docs/formats.md)", path=str(path))
    wanted, sequences = read_id_list(ids) if ids is not None else (None, None)
    with EmbeddingsReader(path) as reader:
        if str(path).endswith(".partial"):
            console.warn(f"{path} is an unfinished run's file: it holds the proteins done so far "
                         f"({option('embed --resume', 'embed with resume=True')} finishes it)")
        if reader.subgroups:  # (another tool's ids with '/' written as they were: h5py made them groups)
            from protrans_cli.heads.labels import some_ids

            console.warn(f"{path}: {len(reader.subgroups)} group(s) at the top of this flat file are not read, and the "
                         f"datasets in them are not exported: {some_ids(sorted(reader.subgroups))}")
        if sequences is not None and "layout" not in reader.attrs:
            reader.aliases = _found_by_sequence(reader, wanted, sequences)
        if chosen_format == "esm":
            return _export_esm(reader, output, kind, layer, wanted, sequences, ids, all_layers)
        source_kind = _chosen_kind(reader, kind)
        pooled = source_kind == PER_PROTEIN and PER_PROTEIN not in reader.kinds
        if pooled:
            source_kind = PER_RESIDUE
            console.info(f"{path}: per-residue embeddings only; each protein's vector is the mean of its residues "
                         "(as embed's per-protein vectors)")
        order = selected_ids(reader, source_kind, wanted, sequences, ids)
        plan = _Plan(reader, source_kind, layer, pooled, order, sequences, all_layers=all_layers)
        out_kind = PER_PROTEIN if pooled else source_kind
        # (-o a link of the user's own is written where it leads, as predict's and the shell's `>`:
        # renamed over, the link became a file beside it and its target was never written)
        # (stdout streamed: `export FILE | head` shows its rows at once; a stopped export loses
        # nothing, its source stays, and the pipeline sees exit 130/143)
        with atomic_output(output, follow_link=True, stream_stdout=True) as stream:
            if chosen_format == "npz":
                rows = _write_npz(stream, plan, out_kind, reader, path)
            else:
                rows = _write_table(stream, plan, out_kind, chosen_format, digits)
            _stop_if_signalled()  # (before the output is committed)
    plan.warn_non_finite()
    shown = "stdout" if output is None or str(output) == "-" else str(output)
    # (committed: a signal from here on, as the notes and the summary are said, stops nothing)
    console.output_complete(output)
    _spreadsheet_note(rows, chosen_format)
    console.info(f"export: {console.counted(len(order), 'protein')} ({out_kind.replace('_', '-')}, "
                 f"{plan.dim} dimensions{'' if out_kind == PER_PROTEIN else f', {rows:,} residues'}) "
                 f"into {shown}")
    return Exported(len(order), rows, out_kind, plan.dim, chosen_format)


# --- esm-extract's .pt files ------------------------------------------------------------------

# esm-extract's keys: per-residue rows, and per-protein vectors by io.h5.pooling_kind
ESM_FIELDS = {"per_residue": "representations", "mean": "mean_representations", "cls": "bos_representations"}
_NAME_MAX = 255  # bytes of a file name (Linux, macOS)


def _esm_folder(output) -> Path:
    """-o of --format esm: a folder that does not exist yet, or an empty one (its name may end
    in /; a link of the user's own to one is followed). A folder of files is refused: replaced,
    another run's .pt files were lost; added to, they were mixed with another file's."""
    from protrans_cli.io.files import holds_working_directory, through_link

    text = str(output)
    folder = through_link(text.rstrip(os.sep) or text)
    if holds_working_directory(folder):
        raise UsageError(f"{_output(output)}: the current directory (or one above it): give the .pt files a folder "
                         "of their own")
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise UsageError(f"{_output(output)}: exists and is not a folder ({_esm_format()} writes a folder of "
                             ".pt files)")
        try:
            with os.scandir(folder) as entries:  # (closed: one entry read leaves the iterator open)
                filled = next(entries, None) is not None
        except OSError as exc:
            raise RuntimeFailure(f"cannot read this folder: {exc.strerror or exc}", path=text) from None
        if filled:
            raise UsageError(f"{_output(output)}: a folder that is not empty: {_esm_format()} writes a new folder (or "
                             "fills an empty one); choose another name, or empty it")
    return folder


def _export_esm(reader, folder: Path, kind: str | None, layer: int, wanted, sequences, source,
                all_layers: bool) -> Exported:
    """esm-extract's files (module docstring) of what `reader` holds, into `folder`: per residue
    where the file has rows (unless `kind` is per_protein), per protein unless `kind` is
    per_residue (the stored vectors, else the mean of the rows, as esm-extract's `mean`)."""
    import shutil

    from protrans_cli.io.files import default_permissions, make_temporary, replace_directory
    from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, pooling_kind

    if kind == PER_RESIDUE:
        _chosen_kind(reader, kind)  # (refused where the file holds per-protein vectors only)
    parts = []  # (field, kind read, pooled from the rows)
    if kind == PER_RESIDUE or (kind is None and PER_RESIDUE in reader.kinds):
        parts.append((ESM_FIELDS["per_residue"], PER_RESIDUE, False))
    if kind in (None, PER_PROTEIN):
        if PER_PROTEIN in reader.kinds or PER_RESIDUE not in reader.kinds:
            parts.append((ESM_FIELDS[pooling_kind(reader.attrs.get("pooling"))], PER_PROTEIN, False))
        else:
            parts.append((ESM_FIELDS["mean"], PER_RESIDUE, True))
            if kind == PER_PROTEIN:
                console.info(f"{reader.path}: per-residue embeddings only; each protein's vector is the mean of its "
                             "residues (as embed's per-protein vectors)")
    order, plans = None, []
    for field_name, source_kind, pooled in parts:
        these = _order(reader, source_kind, wanted, source)
        if order is None:
            order = these
        elif set(these) != set(order):
            odd = sorted(set(these) ^ set(order))
            raise InputError(f"its per-residue and per-protein embeddings are of different proteins (first: {odd[0]}): "
                             "export one kind (" + option("--per-residue or --per-protein",
                                                          "kind='per_residue' or kind='per_protein'") + ")",
                             path=reader.path)
        if sequences is not None:
            _check_sequences(reader, source_kind, order, sequences, source)
        plans.append((field_name, _Plan(reader, source_kind, layer, pooled, order, sequences, all_layers=all_layers)))
    order = order or []
    names = esm_file_names(order, reader.path)
    numbers = _esm_layer_numbers(reader, plans[0][1], layer) if plans else []
    import torch

    labels = _Labels(reader, plans[0][1].kind if plans else PER_PROTEIN)

    def entry_of(ident: str) -> dict:
        entry: dict = {"label": labels.of(ident)}
        for field_name, plan in plans:
            array = plan.array(ident)
            if plan.layered:  # (L, n_layers, D) rows, (n_layers, D) vectors
                layers = [array[:, k] if array.ndim == 3 else array[k] for k in range(len(numbers))]
            else:
                layers = [array]
            entry[field_name] = {number: torch.from_numpy(np.array(values, dtype=np.float32))
                                 for number, values in zip(numbers, layers)}
        return entry

    partial = make_temporary(folder.parent, f".{folder.name}.partial.", "", folder=True)
    try:
        default_permissions(partial)  # (mkdtemp's 0700: the folder of any output under the umask; still empty)
        save_esm_files(partial, order, names, entry_of, shown=folder, source=reader.path)
        _stop_if_signalled()  # (before the folder is committed)
        replace_directory(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    console.output_complete(folder)
    for _, plan in plans:
        plan.warn_non_finite()
    if holds_complexes(reader) and any(p.kind == PER_RESIDUE and not p.pooled for _, p in plans):
        # (fair-esm has no chain breaks: written as the rows stand, said once, as the .npz keeps them)
        console.info(f"{reader.path} holds complexes (embed --chains {_text(reader.attrs.get('chains'))}): "
                     "esm-extract's files have no chain breaks, so a complex's representations are its chains' "
                     "residues in order, its chain lengths not written (an .npz export keeps them)")
    dim = plans[0][1].dim if plans else 0
    console.info(f"export: {console.counted(len(order), 'protein')} ({', '.join(f for f, _ in plans)}; {dim} "
                 f"dimensions, layer"
                 f"{'s' if len(numbers) != 1 else ''} {', '.join(map(str, numbers))}) into {folder}{os.sep} as "
                 "esm-extract .pt files")
    out_kind = plans[0][1].kind if plans and not plans[0][1].pooled else PER_PROTEIN
    return Exported(len(order), len(order), out_kind, dim, "esm")


def esm_file_names(order: list[str], source) -> dict[str, str]:
    """Each id's esm-extract file name: the escaped id (module docstring; a leading `.` too: no
    hidden file, which globs skip) and `.pt`. An id too long for a file name is refused
    (`source`: where the ids come from, for the message)."""
    from protrans_cli.io.h5 import escape_key

    names = {}
    for ident in order:
        name = escape_key(ident)
        name = ("%2E" + name[1:] if name.startswith(".") else name) + ".pt"
        if len(os.fsencode(name)) > _NAME_MAX:
            raise InputError(f"its id makes a file name of {len(os.fsencode(name))} bytes, over the {_NAME_MAX} a file "
                             "name can have", path=str(source), record=ident)
        names[ident] = name
    return names


def save_esm_files(folder: Path, order: list[str], names: dict[str, str], entry_of, *, shown: Path, source) -> None:
    """torch.save `entry_of(ident)` of each id of `order` as `folder`/`names[ident]`, a protein at a
    time, into `folder`, a new folder of this run's own: two ids that a case-blind file system
    makes one file, and a full disk, are one line each (`shown`: the folder the user named;
    `source`: where the ids come from)."""
    import torch

    from protrans_cli.io.files import disk_full

    taken: dict[str, str] = {}
    for ident in console.progress(order, desc="export", unit="protein"):
        _stop_if_signalled()
        entry = entry_of(ident)
        try:
            with open(folder / names[ident], "xb") as handle:
                torch.save(entry, handle)
        except FileExistsError:  # (a file system that does not tell upper from lower case)
            other = taken.get(names[ident].casefold(), "another protein")
            raise InputError(f"its file {names[ident]} is {other!r}'s on this file system (it does not tell upper "
                             "from lower case, or composed from decomposed letters): write to a folder on "
                             "another file system", path=str(source), record=ident) from None
        except (OSError, RuntimeError) as exc:
            # (a full disk inside torch.save is its zip writer's RuntimeError "unexpected pos 832
            # vs 726", raised while handling the OSError: a traceback)
            reason = disk_full(exc) or (exc.strerror if isinstance(exc, OSError) else None)
            if reason is None:
                raise
            raise RuntimeFailure(f"cannot write: {reason}", path=str(Path(shown) / names[ident])) from None
        taken[names[ident].casefold()] = ident


def _esm_layer_numbers(reader, plan: "_Plan", layer: int) -> list[int]:
    """The layers a plan reads, numbered as esm-extract numbers them (0 the embedding layer .. N
    the last) where the file records its hidden states (embed's `layers`, counted from the last,
    and `num_hidden_states`); else as recorded, or as given."""
    from protrans_cli.heads.data import recorded_layers

    try:
        stored, states = recorded_layers(reader)
    except InputError:  # (_layer_index refused such `layers` before this; a `num_hidden_states` that is
        # no number beside no `layers` (another tool's file) numbers nothing: the layer is the one given)
        stored, states = None, None
    if plan.layered:
        numbers = stored if stored is not None and len(stored) == plan.layer_count else list(range(plan.layer_count))
    elif stored is not None:
        numbers = [stored[plan.index if plan.index is not None and plan.index < len(stored) else 0]]
    else:
        numbers = [layer]
    return [n + states if states and n < 0 else n for n in numbers]


class _Labels:
    """Each protein's esm-extract label: the header line embed recorded (bio_embeddings'
    `original_id`), else its id."""

    def __init__(self, reader, kind: str):
        self.reader, self.kind = reader, kind
        stacked = getattr(reader, "_stacked", None)
        self.stacked = dict(zip(stacked.ids(), stacked.column("headers"))) if stacked is not None else None

    def of(self, ident: str) -> str:
        from protrans_cli.io.h5 import dataset_attrs

        if self.stacked is not None:
            return self.stacked.get(ident) or ident
        if ident in self.reader.aliases:  # (found by its sequence: the dataset's header names another id)
            return ident
        key = self.reader.key_for(ident, self.kind)
        attrs = dataset_attrs(self.reader._group(self.kind), key)[0] if key is not None else {}
        for name in ("header", "original_id"):
            if name in attrs:
                value = attrs[name]
                value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                if isinstance(value, str) and value:
                    return value
        return ident


def _export_probabilities(path, output, facts: dict, fmt: str, ids, digits: int | None) -> Exported:
    """`predict --probabilities`' file (a group per output of (L, C) float32 arrays) as a table
    of one row a residue, `id, position, <output>:<class> ...` (predict's per-protein CSV's
    column names), or an .npz of `ids`, `offsets`, `lengths` and one (sum of lengths, C) array
    per output, classes in `metadata`."""
    from protrans_cli.io.files import atomic_output
    from protrans_cli.io.h5 import escape_key, h5_file, read_array, stored_proteins

    outputs = list(facts["kinds"])
    classes = {o: _class_names(facts["classes"][o]) for o in outputs}
    wanted, _ = read_id_list(ids) if ids is not None else (None, None)
    with h5_file(path, "r") as f:
        present = [ident for ident, _ in stored_proteins(f[outputs[0]], checksums=False)]
        order = _selected(present, wanted, ids, path)

        def one(ident: str, o: str, rows: int | None = None) -> np.ndarray:
            """Output o's (L, C) probabilities of a protein, checked (L = `rows` where given)."""
            key = escape_key(ident)
            if key not in f[o]:
                raise InputError(f"has {outputs[0]} probabilities for this protein but no {o} ones (damaged)",
                                 path=str(path), record=ident)
            array = read_array(f[o], key)
            if array.ndim != 2 or array.shape[1] != len(classes[o]) or (rows is not None and len(array) != rows):
                expected = f"({'residues' if rows is None else rows}, {len(classes[o])})"
                raise InputError(f"{o} probabilities of shape {array.shape}, not {expected} (damaged, or not "
                                 "predict's)", path=str(path), record=ident)
            return array

        def arrays(ident: str) -> list[np.ndarray]:
            first = one(ident, outputs[0])
            return [first] + [one(ident, o, len(first)) for o in outputs[1:]]

        columns = [f"{o}:{c}" for o in outputs for c in classes[o]]
        # complexes (predict on embed --chains' file: a `chains` attribute on each complex's dataset)
        chains = _probability_chains(f[outputs[0]], order, path)
        rows = 0
        with atomic_output(output, follow_link=True, stream_stdout=True) as stream:
            if fmt == "npz":
                lengths = np.array([f[outputs[0]][escape_key(i)].shape[0] for i in order], dtype=np.int64)
                metadata = {"source": os.path.abspath(str(path)), "task": facts.get("task"), "classes": classes}
                with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
                    _index_members(archive, order, lengths, metadata)
                    if chains is not None:  # (as an embeddings file's .npz has them)
                        every = [chains.get(i) or [int(n)] for i, n in zip(order, lengths)]
                        _member(archive, "chain_counts", np.array([len(c) for c in every], dtype=np.int64))
                        _member(archive, "chains", np.array([n for c in every for n in c], dtype=np.int64))
                    for o in outputs:  # (an output at a time: a member is written whole)
                        with archive.open(o + ".npy", "w", force_zip64=True) as member:
                            member.write(_npy_header(np.dtype(np.float32), (int(lengths.sum()), len(classes[o]))))
                            for i, ident in enumerate(order):
                                _stop_if_signalled()
                                member.write(np.ascontiguousarray(one(ident, o, int(lengths[i])),
                                                                  dtype=np.float32).tobytes())
                rows = int(lengths.sum())
            else:
                sep = "\t" if fmt == "tsv" else ","
                numbers = sep.join([_number_format(np.dtype(np.float32), digits)] * len(columns))
                places = ["chain", "chain_position"] if chains is not None else []
                stream.write((sep.join(["id", "position", *places, *(_field(c, fmt) for c in columns)]) + "\n").encode())
                for ident in console.progress(order, desc="export", unit="protein"):
                    _stop_if_signalled()
                    table = np.concatenate(arrays(ident), axis=1)
                    name = _field(ident, fmt)
                    if chains is None:
                        stream.write("".join(f"{name}{sep}{i + 1}{sep}{numbers % tuple(row)}\n"
                                             for i, row in enumerate(table.tolist())).encode("utf-8"))
                    else:
                        lengths = chains.get(ident) or [len(table)]
                        if sum(lengths) != len(table):
                            raise InputError(f"its chains attribute ({', '.join(map(str, lengths))}) does not add up "
                                             f"to its {len(table)} rows (damaged)", path=str(path), record=ident)
                        stream.write("".join(f"{name}{sep}{i + 1}{sep}{c}{sep}{k}{sep}{numbers % tuple(row)}\n"
                                             for i, ((c, k), row) in enumerate(zip(_chain_places(lengths),
                                                                                   table.tolist()))).encode("utf-8"))
                    rows += len(table)
            _stop_if_signalled()
    shown = "stdout" if output is None or str(output) == "-" else str(output)
    # (committed: a signal from here on, as the notes and the summary are said, stops nothing)
    console.output_complete(output)
    _spreadsheet_note(rows, fmt)
    console.info(f"export: {console.counted(len(order), 'protein')} ({', '.join(outputs)} probabilities, "
                 f"{rows:,} residues) into {shown}")
    return Exported(len(order), rows, "probabilities", len(columns), fmt)


def _probability_chains(group, order: list[str], path) -> dict[str, list[int]] | None:
    """{id: chain lengths} of the complexes among a probabilities file's proteins `order` (their
    datasets' `chains` attribute, predict's on a file of embed --chains), None where none is."""
    from protrans_cli.io.h5 import dataset_attrs, escape_key, stored_chains

    chains = {}
    for ident in order:
        lengths = stored_chains(dataset_attrs(group, escape_key(ident))[0])
        if lengths is not None:
            lengths = list(lengths)
            if min(lengths, default=0) < 1:
                raise InputError(f"its chains attribute ({', '.join(map(str, lengths))}) holds no chain, or an "
                                 "empty one (damaged)", path=str(path), record=ident)
            chains[ident] = lengths
    return chains or None


def _class_names(recorded) -> list[str]:
    """A `classes_<output>` attribute's classes: one letter each ("HEC"), or a JSON list."""
    text = str(recorded)
    if text.startswith("["):
        try:
            return [str(c) for c in json.loads(text)]
        except ValueError:
            pass
    return list(text)


SPREADSHEET_ROWS = 1_048_576  # Excel's and LibreOffice Calc's rows, the header's included


def _spreadsheet_note(rows: int, fmt: str) -> None:
    """A warning for a table longer than a spreadsheet holds: Excel opens the first 1,048,576
    rows and drops the rest (a proteome's residues are millions)."""
    if fmt != "npz" and rows + 1 > SPREADSHEET_ROWS:
        console.warn(f"{rows + 1:,} rows: a spreadsheet (Excel, LibreOffice) opens the first {SPREADSHEET_ROWS:,} "
                     "only; read it with R, pandas or numpy, or export to .npz")


def _stop_if_signalled() -> None:
    """Stop for a Ctrl-C, SIGTERM or SIGHUP whose exception Python dropped: h5py drops its objects through
    weakref callbacks, and one that Ctrl-C raised in was lost ("Exception ignored in ..."), so an
    export went on to the end and committed its output (one Ctrl-C in three on a per-residue .npz).
    The CLI notes every such signal; outside it (the library) there is nothing to check."""
    import sys

    cli = sys.modules.get("protrans_cli.cli")
    if cli is not None:
        cli.raise_if_stopped()


def _found_by_sequence(reader, wanted: list[str], sequences: dict) -> dict[str, str]:
    """{id: key} of the FASTA's proteins that another tool's file does not name but holds by
    their sequence's checksum, as fit finds them (bio_embeddings keys a sequence by its md5, once
    for every id that has it, and names one of those ids in `original_id`)."""
    from protrans_cli.heads.data import _checksum_maps, label_checksums

    kind = reader.kinds[0]  # (another tool's flat file holds one kind)
    unnamed = [i for i in wanted if reader.key_for(i, kind) is None]
    if not unnamed:
        return {}
    by_checksum, _ = _checksum_maps(reader, reader.keys(kind), kind)
    found = {}
    for ident in unnamed:
        keys = [k for c in label_checksums(sequences[ident]) for k in by_checksum.get(c, ())]
        if keys:
            found[ident] = keys[0]
    return found


def selected_ids(reader, kind: str, wanted: list[str] | None, sequences: dict | None, source) -> list[str]:
    """The proteins of `reader`'s file that an --ids file names (`wanted`, `sequences`: read_id_list's
    of the file `source`), in its order, else (`wanted` None) all of them in key order: each must be
    in the file (one line naming the first missing and `source` otherwise); a FASTA's sequences must
    be the embedded ones (where the file records checksums). Another tool's file finds a FASTA's
    protein by its sequence too (`reader.aliases`, where not set already). export and knn --ids."""
    if sequences is not None and "layout" not in reader.attrs and not reader.aliases:
        reader.aliases = _found_by_sequence(reader, wanted, sequences)
    order = _order(reader, kind, wanted, source)
    if sequences is not None:
        _check_sequences(reader, kind, order, sequences, source)
    return order


def _order(reader, kind: str, wanted: list[str] | None, source) -> list[str]:
    """The ids to write, in order: `wanted`'s (each must be in the file), else the file's keys'."""
    import h5py

    from protrans_cli.io.h5 import unescape_key

    if "layout" in reader.attrs and reader.layout != "stacked":
        # embed's own file: every key is its id's (ids() read each dataset's id attribute: 130 us a
        # protein); a group among them is no protein, as ids() and items() have it (it was a TypeError)
        group = reader._group(kind)
        present = [unescape_key(key) for key in reader.keys(kind)
                   if h5py.h5o.get_info(group.id, key.encode("utf-8")).type == h5py.h5o.TYPE_DATASET]
    else:
        present = reader.ids(kind)
    if wanted is None and reader.layout == "stacked":
        return present  # (row order, which is key order)
    # another tool's file: an id may find its dataset otherwise than by spelling its key (the
    # ProtTrans script's keys are whole header lines, found by their first word: the FASTA id),
    # as fit and predict find it (`--ids proteins.fasta` of that script's file refused every id)
    found = None if "layout" in reader.attrs else (lambda ident: reader.key_for(ident, kind) is not None)
    return _selected(present, wanted, source, reader.path, reader.failed, found=found)


def _selected(present: list[str], wanted: list[str] | None, source, path, failed=None, found=None) -> list[str]:
    """The ids to write, in order: `wanted`'s (each must be among `present`, or be `found`;
    `failed()`, where the file records failures, gives embed's reason for a missing one), else
    `present` in key order (the escaped ids as bytes)."""
    from protrans_cli.io.h5 import escape_key

    if wanted is None:
        return sorted(present, key=lambda i: escape_key(i).encode("utf-8"))
    have = set(present)
    missing = [i for i in wanted if i not in have and not (found is not None and found(i))]
    if missing:
        from protrans_cli.heads.data import near_miss_note

        reasons = failed() if failed is not None else {}
        why = "; ".join(f"{brief(i)}: {reasons[i]}" for i in missing[:3] if i in reasons)
        raise InputError(f"{console.counted(len(missing), 'protein')} of the {len(wanted):,} it names "
                         f"{'is' if len(missing) == 1 else 'are'} not in {path} (first: "
                         f"{', '.join(map(brief, missing[:3]))}{', ...' if len(missing) > 3 else ''})"
                         f"{f'; failed in embed: {why}' if why else ''}"
                         f"{near_miss_note(missing, sorted(have.difference(wanted)))}",
                         path=str(source))
    return list(wanted)


def _check_sequences(reader, kind: str, order: list[str], sequences: dict, source) -> None:
    """Each protein's embedding is of the FASTA's sequence (the checksum embed stored; a protein
    embed truncated by the prefix it kept); a file without checksums is not checked."""
    from protrans_cli.heads.data import _prefix_checksum, label_checksums

    for ident in order:
        key = reader.key_for(ident, kind)
        length, cut, checksum = reader.facts(key, kind)
        if checksum is None:
            continue
        sequence = sequences[ident]
        if cut is not None and length is not None:
            ok = checksum == _prefix_checksum(sequence, length)
        else:
            ok = checksum in label_checksums(sequence)
        if not ok:
            raise InputError(f"the embedding in {reader.path} is of another sequence than this FASTA's (its "
                             "checksum differs): embed this FASTA, or give the FASTA that was embedded",
                             path=str(source), record=ident)


def _empty_dim(reader, kind: str) -> int:
    """The width of a file of no protein: embed's `embedding_dim` where a grouped or flat file
    has no dataset to say it (it was refused, "holds no per_protein embeddings", where a stacked
    file of none gave a header and empty arrays)."""
    dim = reader.attrs.get("embedding_dim")
    if reader.layout != "stacked" and "layout" in reader.attrs and isinstance(dim, (int, np.integer)) and dim > 0:
        return int(dim)
    return reader.dim(kind)


class _Plan:
    """The arrays to write, a protein at a time, in order: (id, rows (L, D) or vector (D,),
    residues or None)."""

    def __init__(self, reader, kind: str, layer: int, pooled: bool, order: list[str], sequences, *,
                 all_layers: bool = False):
        from protrans_cli.io.h5 import PER_PROTEIN

        self.reader, self.kind, self.pooled, self.order, self.sequences = reader, kind, pooled, order, sequences
        self.per_protein = kind == PER_PROTEIN
        # (get() looked each id up through h5py's dictionary interface: 3x the time of the read)
        self.own = "layout" in reader.attrs and reader.layout != "stacked"
        self.group = reader._group(kind) if self.own else None
        # a stacked file's rows, where `order` follows them (the whole file, or --ids in its order):
        # read a block at a time (a read of one row a protein, about 60 us, was most of an export)
        self.view = reader._stacked if reader.layout == "stacked" else None
        if self.view is not None:
            at = self.view.rows()
            rows = np.fromiter((at.get(ident, -1) for ident in order), np.int64, len(order))
            if not (rows >= 0).all() or (len(rows) > 1 and (np.diff(rows) <= 0).any()):
                self.view = None
        self.block_start, self.block = 0, None
        first = self._raw(order[0]) if order else None
        if first is None:  # no protein (every one failed in embed): the table's columns, the arrays' shape
            shape, self.dtype = (_empty_dim(reader, kind),), np.dtype(np.float32)
            if reader.attrs.get("storage_dtype") in ("float16", "float32"):
                self.dtype = np.dtype(reader.attrs["storage_dtype"])
            self.index, self.ndim = None, None
        else:
            self.index = _layer_index(reader, first.shape, kind, layer)
            shape, self.dtype, self.ndim = first.shape, first.dtype, first.ndim
        # --all-layers: the layer axis kept, after the residue axis ((L, n_layers, D) rows); one
        # of length 1 where the file stores one layer (arrays with no layer axis): the shape is
        # the documented one whatever the number of layers (it was (N, D), and `embeddings[:, k]`
        # of a script probing layer k read dimension k)
        self.layered = all_layers
        self.lone_layer = all_layers and first is not None and self.index is None
        self.layer_count = 1
        if all_layers and first is None:  # (no protein: the layers the file records)
            self.layer_count = len(np.atleast_1d(reader.attrs.get("layers", [-1])))
        elif all_layers and not self.lone_layer:
            self.layer_count = int(shape[0])
        if self.layered:
            self.index = None
            if self.dtype.kind != "f":
                raise InputError(f"holds {self.dtype} arrays, not floating-point embeddings", path=reader.path)
        self.dim = int(shape[-1])
        # a file of complexes (embed --chains linker or separate), read per residue: its tables say
        # each row's chain (a stacked file holds per-protein vectors only)
        self.complexes = not self.per_protein and not pooled and holds_complexes(reader)
        self.non_finite: list[str] = []  # proteins whose pooled mean is not finite (rows of inf or NaN)
        if pooled:
            self.dtype = np.dtype(np.float32)

    def _raw(self, ident: str) -> np.ndarray:
        import h5py

        from protrans_cli.io.h5 import escape_key, open_local, read_array

        if self.own:  # embed's own file: the key is the id's, read through h5py's low-level calls
            key = escape_key(ident)
            obj = open_local(self.group, key.encode("utf-8"), data=True)
            if not isinstance(obj, h5py.h5d.DatasetID):
                return read_array(self.group, key, obj)
            shape = obj.shape  # (asked once: HDF5 makes the dataspace anew each time)
            self.reader.check_declared_width(key, shape)  # (before it is read)
            return read_array(self.group, key, obj, shape)
        if self.view is not None:
            row = self.view.rows()[ident]
            if self.block is None or not self.block_start <= row < self.block_start + len(self.block):
                self.block_start = row
                self.block = self.view.data[row:min(len(self.view), row + self.view._block_rows())]
            return self.block[row - self.block_start]
        return np.asarray(self.reader.get(ident, self.kind))

    def shape_error(self, ident: str, shape: tuple) -> InputError:
        # ("where the first protein's is 2-dimensional with 4 dimensions": axes and width both called dimensions)
        axes = "one axis" if self.ndim == 1 else f"{self.ndim} axes, the last"
        return InputError(f"an array of shape {shape}, where the first protein's has {axes} of {self.dim} values "
                          "(a flat file mixing kinds?)", path=self.reader.path, record=ident)

    def array(self, ident: str) -> np.ndarray:
        array = self._raw(ident)
        if array.ndim != self.ndim:  # (a (D,) vector among (L, D) rows was written as D rows of the table's
            raise self.shape_error(ident, array.shape)  # width: a TypeError, or an .npz numpy cannot read)
        if self.index is not None:
            array = array[self.index]
        if array.shape[-1] != self.dim:
            raise InputError(f"an array of shape {array.shape}, where the first protein's rows have "
                             f"{self.dim} dimensions", path=self.reader.path, record=ident)
        if self.lone_layer:
            array = array[None]  # (the layer axis of the file's one layer)
        if self.pooled:
            if array.shape[-2] == 0:
                raise InputError("has no residue rows: no mean to export", path=self.reader.path, record=ident)
            # (rows of inf and -inf, another writer's, average to NaN: said once by `warn_non_finite`,
            # not by numpy's two-line RuntimeWarning)
            with np.errstate(invalid="ignore", over="ignore"):
                mean = array.astype(np.float64).mean(axis=-2).astype(np.float32)  # ((n_layers, D): every layer)
            if not np.isfinite(mean).all():
                self.non_finite.append(ident)
            return mean
        if self.layered and not self.per_protein:
            array = np.moveaxis(array, 0, 1)  # (n_layers, L, D) -> (L, n_layers, D): a row a residue
        return array

    def warn_non_finite(self) -> None:
        """One line for the proteins whose mean over their rows is not finite: their stored rows
        hold inf or NaN (embed records such proteins as failed; another writer's file)."""
        if self.non_finite:
            shown = ", ".join(self.non_finite[:3]) + (", ..." if len(self.non_finite) > 3 else "")
            console.warn(f"{self.reader.path}: {console.counted(len(self.non_finite), 'protein')} with residue rows "
                         f"that are not finite (inf or NaN), so their mean is not either (first: {shown})")

    def residues(self, ident: str, rows: int) -> str | None:
        """The residue letters of the protein's rows (rows are residues of the normalised sequence,
        rare residues as written), None without a FASTA."""
        from protrans_cli.residues import SequenceRejected, normalise

        if self.sequences is None:
            return None
        sequence = self.sequences[ident]
        try:  # (a complex's chains each, their ':'s dropped as embed drops them: no row is a ':')
            letters = "".join(normalise(chain, rare="keep") for chain in sequence.split(":"))
        except SequenceRejected:
            letters = sequence.upper().replace(":", "")
        # more letters than rows: a protein embed truncated (its first rows), else another sequence
        # (a file without checksums: the residue column named the rows after a longer sequence's)
        if len(letters) < rows or (len(letters) > rows and self._cut(ident) is None):
            raise InputError(f"{rows} residue rows, where the FASTA's sequence has {len(letters)} residues",
                             path=self.reader.path, record=ident)
        return letters[:rows]

    def chains(self, ident: str, rows: int) -> list[int] | None:
        """The chain lengths of the protein's rows where the file holds complexes (`complexes`:
        its `chains` attribute linker or separate): a complex's `chains` attribute, one chain of
        all its rows for any other protein; None for a file without complexes."""
        if not self.complexes:
            return None
        from protrans_cli.io.h5 import dataset_attrs, stored_chains

        attrs, _ = dataset_attrs(self.reader._group(self.kind), self.reader.key_for(ident, self.kind))
        if (stored := stored_chains(attrs)) is None:
            return [rows]
        lengths = list(stored)
        if sum(lengths) != rows or min(lengths, default=0) < 1:
            raise InputError(f"its chains attribute ({', '.join(map(str, lengths))}) does not add up to its {rows} "
                             "residue rows (damaged)", path=self.reader.path, record=ident)
        return lengths

    def _cut(self, ident: str) -> int | None:
        """The full length of a protein embed truncated (`truncated_from`), else None."""
        return self.reader.facts(self.reader.key_for(ident, self.kind), self.kind)[1]


def _number_format(dtype: np.dtype, digits: int | None) -> str:
    return f"%.{digits or ROUND_TRIP_DIGITS.get(np.dtype(dtype).name, 9)}g"


def _field(text: str, fmt: str) -> str:
    """An id as a table's field. CSV quotes one with a comma, quote or line break. TSV has no
    quoting of its own: a tab or line break becomes a space (another tool's ids; FASTA ids hold
    neither), and an id that starts with a quote is quoted as CSV quotes it, which pandas' and R's
    TSV readers undo (read as it stands, their quote handling ate it up to the next quote)."""
    if fmt == "csv":
        if any(c in text for c in ',"\n\r'):
            return '"' + text.replace('"', '""') + '"'
        return text
    from protrans_cli.knn import _cell

    return _cell(text)


def _write_table(stream, plan: _Plan, kind: str, fmt: str, digits: int | None) -> int:
    from protrans_cli.io.h5 import PER_PROTEIN

    sep = "\t" if fmt == "tsv" else ","
    number = _number_format(plan.dtype, digits)
    numbers = sep.join([number] * plan.dim)  # (one format of a whole row: numpy.savetxt's way, 1.6x faster)
    dims = [f"dim_{i}" for i in range(plan.dim)]
    per_protein = kind == PER_PROTEIN
    residue_column = not per_protein and plan.sequences is not None
    chain_columns = not per_protein and plan.complexes  # (a file of complexes: each row's chain and place in it)
    head = ["id", *([] if per_protein else ["position"]), *(["residue"] if residue_column else []),
            *(["chain", "chain_position"] if chain_columns else []), *dims]
    stream.write((sep.join(head) + "\n").encode())
    rows = 0
    for ident in console.progress(plan.order, desc="export", unit="protein"):
        _stop_if_signalled()
        array = plan.array(ident)
        name = _field(ident, fmt)
        if per_protein:
            text = name + sep + numbers % tuple(array.tolist()) + "\n"
            rows += 1
        else:
            letters = plan.residues(ident, len(array)) if residue_column else None
            places = _chain_places(plan.chains(ident, len(array))) if chain_columns else None
            lines = []
            for i, row in enumerate(array.tolist()):
                cells = [name, str(i + 1)]
                if letters is not None:
                    cells.append(letters[i])
                if places is not None:
                    cells += places[i]
                lines.append(sep.join(cells) + sep + numbers % tuple(row))
            text = "".join(line + "\n" for line in lines)
            rows += len(array)
        stream.write(text.encode("utf-8"))
    return rows


def holds_complexes(reader) -> bool:
    """Whether an embeddings file may hold complexes (its `chains` attribute linker or separate:
    embed --chains; a complex's datasets then carry their chain lengths)."""
    return _text(reader.attrs.get("chains")) not in (None, "error") and reader.layout != "stacked"


def _chain_places(lengths) -> list[tuple[str, str]]:
    """(chain, position in the chain), both 1-based as text, of each row of chains of `lengths`."""
    return [(str(c), str(i)) for c, n in enumerate(lengths, 1) for i in range(1, n + 1)]


def _npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    """The header of a .npy file of `shape` and `dtype` (format 1.0, or 2.0 past 64 KiB)."""
    import io

    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def _member(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(name + ".npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def _index_members(archive: zipfile.ZipFile, order: list[str], lengths: np.ndarray | None, metadata: dict) -> None:
    """An .npz's members beside its arrays: `ids`, with ragged rows `lengths` and `offsets`
    (protein i's rows are [offsets[i], offsets[i + 1])), and `metadata` as JSON text."""
    _member(archive, "ids", np.array(order, dtype=str) if order else np.empty(0, dtype="<U1"))
    if lengths is not None:
        _member(archive, "lengths", lengths)
        _member(archive, "offsets", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    _member(archive, "metadata", np.array(json.dumps(metadata, default=str)))


def _write_npz(stream, plan: _Plan, kind: str, reader, path) -> int:
    """The arrays of the module docstring, `embeddings` streamed a protein at a time."""
    from protrans_cli import __version__
    from protrans_cli.io.h5 import PER_PROTEIN

    per_protein = kind == PER_PROTEIN
    per_layer = (plan.layer_count,) if plan.layered else ()
    if per_protein:
        lengths = None
        shape = (len(plan.order), *per_layer, plan.dim)
    else:
        # the rows of every protein, for the header: from the datasets' shapes, no data read
        lengths = np.array([_rows_of(reader, plan, ident) for ident in plan.order], dtype=np.int64)
        shape = (int(lengths.sum()), *per_layer, plan.dim)
    metadata = {"source": os.path.abspath(str(path)), "kind": kind, "layout": reader.layout,
                "exported_by": f"protrans {__version__}"}
    for name in ("model", "revision", "commit", "family", "layers", "num_hidden_states", "pooling",
                 "compute_dtype", "storage_dtype", "chains", "linker_length", "protrans_version", "command_line"):
        if name in reader.attrs:
            value = reader.attrs[name]
            metadata[name] = value.tolist() if isinstance(value, np.ndarray) else value
    if plan.index is not None:
        metadata["layer_index"] = plan.index
    metadata["layer_axis"] = bool(plan.layered)  # embeddings (rows, n_layers, D), layers as `layers` lists them
    rows = 0
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        _index_members(archive, plan.order, lengths, metadata)
        if (chains := _chain_members(reader, plan)) is not None:  # (complexes: each protein's chain lengths)
            _member(archive, "chain_counts", chains[0])
            _member(archive, "chains", chains[1])
        with archive.open("embeddings.npy", "w", force_zip64=True) as member:
            member.write(_npy_header(plan.dtype, shape))
            for i, ident in enumerate(console.progress(plan.order, desc="export", unit="protein")):
                _stop_if_signalled()
                array = np.ascontiguousarray(plan.array(ident), dtype=plan.dtype)
                if lengths is not None and len(array) != lengths[i]:
                    raise InputError(f"{len(array)} rows, where its dataset's shape said {lengths[i]}",
                                     path=reader.path, record=ident)
                member.write(array.tobytes())
                rows += 1 if per_protein else len(array)
    return rows


def _chain_members(reader, plan: _Plan) -> tuple[np.ndarray, np.ndarray] | None:
    """(chain_counts, chains) of the module docstring for a file of complexes (its `chains`
    attribute linker or separate: each complex's dataset has a `chains` attribute), else None."""
    from protrans_cli.io.h5 import PER_RESIDUE, dataset_attrs, stored_chains, stored_length

    if not holds_complexes(reader):
        return None
    group, counts, chains = reader._group(plan.kind), [], []
    for ident in plan.order:
        attrs, shape = dataset_attrs(group, reader.key_for(ident, plan.kind))
        stored = stored_chains(attrs)
        lengths = (list(stored) if stored is not None
                   else [stored_length(attrs, shape, per_residue=plan.kind == PER_RESIDUE) or 0])
        counts.append(len(lengths))
        chains += lengths
    return np.array(counts, dtype=np.int64), np.array(chains, dtype=np.int64)


def _rows_of(reader, plan: _Plan, ident: str) -> int:
    shape = reader.dataset(ident, plan.kind).shape
    if len(shape) != plan.ndim:
        raise plan.shape_error(ident, shape)
    return int(shape[-2])  # (L, D) or (n_layers, L, D)


# --- info ------------------------------------------------------------------------------------

_SHOWN_ATTRIBUTES = ("model", "revision", "commit", "weights_fingerprint", "family", "layers", "num_hidden_states",
                     "input_prefix", "pooling", "compute_dtype", "storage_dtype", "device", "embedding_dim", "max_length",
                     "long_policy", "chunk_overlap", "chains", "linker_length", "part", "packing", "compiled", "attention",
                     "imported_from", "structure_tokens", "structure_tokens_file", "device_map", "protrans_version",
                     "command_line")


def _device_map_line(text) -> str:
    """`auto: 18 modules on cuda:0, 14 on cpu` of a file's `device_map` attribute (its text as it
    is where it is not the JSON embed writes)."""
    import json

    from protrans_cli.placement import describe

    try:
        recorded = json.loads(str(text))
        return f"{recorded['setting']}: {describe(recorded['modules'])}"
    except (ValueError, TypeError, KeyError, AttributeError):
        return str(text)


def _running_partial(path: str) -> dict | None:
    """A running embed's OUTPUT.partial (it holds HDF5's lock, so the file cannot be opened):
    the proteins complete so far, from the ledger it appends after every flush; None when the
    file opens (a stopped run's) or has no ledger (another program's lock: the reader says so)."""
    from protrans_cli.io.h5 import h5_file, ledger_count

    done = ledger_count(path)
    if done is None:
        return None
    try:
        h5_file(path, "r").close()
    except BlockingIOError:
        # (a torchrun rank's OUTPUT.shard-RRR-of-NNN.partial is merged into OUTPUT at the end)
        final = re.sub(r"\.shard-\d+-of-\d+$", "", path.removesuffix(".partial"))
        return {"status": f"being written by a running protrans embed (it holds the file's lock): read {final} "
                          "once the run ends", "written_by": "protrans", "proteins_done": done}
    except OSError:
        return None
    return None


def info(path, *, residues: bool = False) -> dict:
    """What the embeddings (or contact maps) file `path` holds: layout, kinds, proteins per kind,
    dimension, stored dtype, the file attributes embed writes, failed proteins, whether it is
    an unfinished run's; with `residues`, the residues (read from every protein's length). A
    directory: a head's, a model's, a train run's or a checkpoint's facts (dir_info.directory_info)."""
    from protrans_cli.io.h5 import EmbeddingsReader

    expect_path(path, "info: path", " (one file or directory)", "; call info for each file")
    path = str(path)
    if os.path.isdir(path):  # a head, model, train run or checkpoint directory
        from protrans_cli.dir_info import directory_info

        if residues:
            raise UsageError(f"{path}: {option('--residues', 'residues=True')} counts an embeddings file's residues; "
                             "this is a directory")
        return directory_info(path)
    facts: dict = {"file": path}
    try:
        facts["bytes"] = os.path.getsize(path)
    except OSError:
        pass
    if path.endswith(".partial"):
        running = None if residues else _running_partial(path)
        if running is not None:
            facts.update(running)
            return facts
        facts["status"] = ("unfinished: a run is writing it or was stopped "
                           f"({option('embed --resume', 'embed with resume=True')} continues it)")
    elif os.path.exists(path + ".partial"):
        facts["status"] = (f"finished; {path}.partial beside it is a later run's "
                           f"({option('embed --resume', 'embed with resume=True')}), still unfinished")
    else:
        facts["status"] = "finished"
    other = _other_output(path)
    if other is not None and other["layout"] == "probabilities":
        # predict writes its file whole under the name given (it has no OUTPUT.partial and no
        # --resume): `--probabilities p.h5.partial` was called an unfinished embed run's
        facts["status"] = "finished"
    if other is not None:
        if residues:
            raise UsageError(f"{path}: {option('--residues', 'residues=True')} counts an embeddings file's residues; "
                             f"this is {other['written_by']}'s output")
        facts.update(other)
        del facts["groups"]
        return facts
    with EmbeddingsReader(path) as reader:
        own = "layout" in reader.attrs
        facts["written_by"] = "protrans" if own else "another tool (no protrans attributes: ProtTrans script, " \
                                                     "bio_embeddings, ...)"
        facts["layout"] = reader.layout
        if reader.attrs.get("layout") == "stacked" and reader.layout != "stacked":
            # (a stacked run's OUTPUT.partial: a dataset a protein until the run completes)
            facts["layout"] = "stacked (its proteins one dataset each until the run completes)"
        facts["kinds"] = list(reader.kinds)
        # (a stacked file's rows, not its ids: reading, checking and escaping a million ids took 7 s)
        facts["proteins"] = {kind: len(reader._stacked) if reader.layout == "stacked" else len(reader.keys(kind))
                             for kind in reader.kinds}
        if reader.subgroups:  # (not proteins, and the datasets in them are not read: said, not left out silently)
            facts["groups_not_read"] = sorted(reader.subgroups)
        elif reader.layout == "grouped" and not own:
            # Another tool's grouped file: a group among a kind's datasets was counted as a protein
            # (`--ids` and export, which read datasets alone, had one fewer). protrans's own files
            # escape '/' in ids, so their groups hold datasets alone and are counted by name only.
            nested = _nested_groups(reader)
            for name in nested:
                facts["proteins"][name.split("/", 1)[0]] -= 1
            if nested:
                facts["groups_not_read"] = nested
        for kind in reader.kinds:
            shape, dtype = _first_shape(reader, kind)
            if shape is not None:
                facts.setdefault("dim", int(shape[-1]))
                facts.setdefault("stored_dtype", str(dtype))
                layered = len(shape) == (2 if kind == "per_protein" else 3)
                if layered:
                    facts.setdefault("layers_stored", int(shape[0]))
        for name in _SHOWN_ATTRIBUTES:
            if name in reader.attrs:
                value = reader.attrs[name]
                facts[name] = value.tolist() if isinstance(value, np.ndarray) else value
        runs = reader.runs() if own else []
        if runs:
            facts["runs"] = len(runs)
        failed = reader.failed()
        facts["failed"] = failed
        if "truncated" in reader.attrs:  # (a file of --long-policy truncate; files from before it lack it)
            from protrans_cli.io.h5 import truncated_attr

            facts["truncated"] = truncated_attr(reader.attrs["truncated"])
        if residues:
            facts["residues"] = _residue_counts(reader)
    return facts


def _nested_groups(reader) -> list[str]:
    """`kind/name` of the groups inside a grouped file's kind groups (not proteins)."""
    import h5py

    nested = []
    for kind in reader.kinds:
        group = reader._group(kind)
        nested += [f"{kind}/{key}" for key in reader.keys(kind)
                   if h5py.h5o.get_info(group.id, key.encode("utf-8")).type == h5py.h5o.TYPE_GROUP]
    return sorted(nested)


def _other_output(path: str) -> dict | None:
    """info of protrans's other HDF5 outputs: a contact-map file (`protrans contacts`) or a
    probabilities file (`predict --probabilities`: no embeddings, one group per output, the
    class order in `classes_<output>`); None for any other file. `groups` (not shown): the
    groups holding the proteins' datasets."""
    from protrans_cli.io.h5 import CONTACTS, _link_names, failed_attr, h5_file

    try:
        with h5_file(path, "r") as f:
            task = f.attrs.get("task")
            classes = {name[len("classes_"):]: _text(f.attrs[name]) for name in f.attrs if name.startswith("classes_")}
            if isinstance(kinds := _text(f.attrs.get("kinds")), str) and kinds == CONTACTS and CONTACTS in f:
                facts = {"written_by": "protrans contacts", "layout": "contacts", "kinds": [CONTACTS]}
            elif isinstance(task, str) and classes and all(name in f for name in classes):
                facts = {"written_by": "protrans predict --probabilities", "layout": "probabilities",
                         "kinds": list(classes), "task": task, "classes": classes}
            else:
                return None
            facts["proteins"], groups = {}, []
            for kind in facts["kinds"]:
                names = _link_names(f[kind])
                facts["proteins"][kind] = len(names)
                groups.append(kind)
                if names and "stored_dtype" not in facts:
                    facts["stored_dtype"] = str(f[kind][names[0].decode("utf-8")].dtype)
            for name in ("model", "revision", "commit", "family", "compute_dtype", "device", "protrans_version",
                         "device_map", "command_line"):  # (device_map: contacts --device-map)
                if name in f.attrs:
                    value = f.attrs[name]
                    facts[name] = value.tolist() if isinstance(value, np.ndarray) else _text(value)
            if "failed" in f.attrs:
                facts["failed"] = failed_attr(f.attrs.get("failed"), path)
            if "truncated" in f.attrs:  # (contacts --long-policy truncate)
                from protrans_cli.io.h5 import truncated_attr

                facts["truncated"] = truncated_attr(f.attrs["truncated"])
            facts["groups"] = groups
            return facts
    except (OSError, KeyError):
        return None  # (EmbeddingsReader then says what is wrong with it, in its words)


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _first_shape(reader, kind: str):
    """(shape, dtype) of the first protein's array of `kind` (a stacked file's one row), or
    (None, None) for a file without one."""
    import h5py

    from protrans_cli.io.h5 import open_local, width_of

    if reader.layout == "stacked":
        data = reader._stacked.data
        return tuple(data.shape[1:]), data.dtype
    group = reader._group(kind)
    for key in reader.keys(kind):
        obj = open_local(group, key.encode("utf-8"))
        if isinstance(obj, h5py.h5d.DatasetID):
            width_of(obj.shape, reader.path, key)  # (a scalar: refused, naming it)
            return tuple(obj.shape), obj.dtype
    return None, None


def _residue_counts(reader) -> dict:
    """Residues of the proteins (per-residue rows where the file has them, else the `length`
    attributes or column): total, mean, shortest, longest; truncated and chunked proteins."""
    from protrans_cli.io.h5 import PER_RESIDUE

    kind = PER_RESIDUE if PER_RESIDUE in reader.kinds else reader.kinds[0]
    if reader.layout == "stacked":
        view = reader._stacked
        # (0: no length recorded, import-esm's without --fasta: not counted, as in the other layouts)
        lengths = np.asarray(view.column("lengths"), dtype=np.int64)
        recorded = lengths > 0
        lengths = lengths[recorded]
        truncated = int((np.asarray(view.column("truncated_from"))[recorded] > 0).sum())
        chunked = int((np.asarray(view.column("chunks"))[recorded] > 0).sum())
    else:
        from protrans_cli.io.h5 import _whole_number, dataset_attrs, stored_length, truncated_from

        group, values, truncated, chunked, complexes = reader._group(kind), [], 0, 0, 0
        for key in console.progress(reader.keys(kind), desc="lengths", unit="protein"):
            attrs, shape = dataset_attrs(group, key)
            length = stored_length(attrs, shape, per_residue=kind == PER_RESIDUE)
            if length is None:
                continue
            values.append(length)
            truncated += truncated_from(attrs) is not None
            chunked += bool(_whole_number(attrs, "chunks"))
            complexes += "chains" in attrs  # (embed --chains: a complex's chain lengths; read here anyway)
        lengths = np.asarray(values, dtype=np.int64)
    if not len(lengths):
        return {"counted": 0}
    counts = {"counted": int(len(lengths)), "total": int(lengths.sum()), "mean": round(float(lengths.mean()), 1),
              "shortest": int(lengths.min()), "longest": int(lengths.max()), "truncated": truncated,
              "chunked": chunked}
    if holds_complexes(reader):  # (a stacked file records no chains: not counted there)
        counts["complexes"] = complexes
    return counts


def file_ids(path) -> list[str]:
    """The ids of an embeddings file (its per-protein vectors' where it has them), in key order
    (export's default order)."""
    from protrans_cli.io.h5 import EmbeddingsReader, h5_file, stored_proteins

    expect_path(path, "file_ids: path", " (one file)")
    other = _other_output(str(path))
    if other is not None:  # a contacts or probabilities file: its first group's proteins
        with h5_file(path, "r") as f:
            return [ident for ident, _ in stored_proteins(f[other["groups"][0]], checksums=False)]
    with EmbeddingsReader(path) as reader:
        return _order(reader, _chosen_kind(reader, None), None, path)


def info_lines(facts: dict) -> list[str]:
    """`info`'s facts as aligned lines for people."""
    from protrans_cli.dir_info import directory_lines, size_text

    if "directory" in facts:
        return directory_lines(facts)
    lines: list[tuple[str, str]] = [("file", facts["file"] + (f" ({size_text(facts['bytes'])})" if "bytes" in facts else ""))]
    lines.append(("status", facts["status"]))
    lines.append(("written by", facts.get("written_by", "")))
    if "proteins_done" in facts:  # a running embed's file: what its ledger says, nothing more is readable
        lines.append(("proteins", f"{facts['proteins_done']:,} complete so far (from its ledger)"))
        return _aligned(lines)
    lines.append(("layout", f"{facts['layout']} ({', '.join(facts['kinds'])})"))
    if facts.get("classes"):
        lines.append(("classes", "; ".join(f"{name} {order}" for name, order in facts["classes"].items())
                      + f" (task {facts.get('task')})"))
    lines.append(("proteins", ", ".join(f"{count:,} {kind.replace('_', '-')}" for kind, count in facts["proteins"].items())))
    if facts.get("groups_not_read"):
        groups = facts["groups_not_read"]
        where = "at the top" if facts.get("layout", "").startswith("flat") else "among the proteins"
        lines.append(("not read", f"{len(groups):,} group(s) {where}, not proteins (ids with '/' written as they were?): "
                                  + ", ".join(map(brief, groups[:3])) + (", ..." if len(groups) > 3 else "")))
    if "dim" in facts:
        lines.append(("dimension", str(facts["dim"])))
    if "layers" in facts:
        layers = ", ".join(map(str, facts["layers"] if isinstance(facts["layers"], list) else [facts["layers"]]))
        states = facts.get("num_hidden_states")
        lines.append(("layers", layers + (f" (of {states} hidden states; -1 the last)" if states else "")))
    elif "layers_stored" in facts:
        lines.append(("layers", f"{facts['layers_stored']} stored"))
    if "model" in facts:
        model = str(facts["model"])
        extra = [f"{n} {facts[n]}" for n in ("family", "revision", "commit") if facts.get(n)]
        lines.append(("model", model + (f" ({', '.join(extra)})" if extra else "")))
    dtypes = []
    if facts.get("compute_dtype"):
        dtypes.append(f"computed in {facts['compute_dtype']}" + (f" on {facts['device']}" if facts.get("device") else ""))
    if facts.get("stored_dtype"):
        dtypes.append(f"stored as {facts['stored_dtype']}")
    if dtypes:
        lines.append(("dtype", ", ".join(dtypes)))
    if facts.get("pooling"):
        lines.append(("pooling", str(facts["pooling"])))
    if facts.get("structure_tokens"):  # (SaProt: embed --structure-tokens)
        lines.append(("3Di states", "none: every residue read with an unknown structure ('M#')"
                      if facts["structure_tokens"] == "none"
                      else f"from {facts.get('structure_tokens_file') or 'a --structure-tokens file'} "
                           f"({facts['structure_tokens']})"))
    if facts.get("device_map"):  # (embed --device-map: the last run's)
        lines.append(("device map", _device_map_line(facts["device_map"])))
    if "long_policy" in facts:
        limit = facts.get("max_length")
        shown = f"{limit:,}" if isinstance(limit, (int, float)) else str(limit)  # (text: another writer's, a traceback)
        lines.append(("long proteins", f"{facts['long_policy']} beyond {shown} residues" if limit
                      else f"{facts['long_policy']} (no limit)"))
    if facts.get("chains") and facts["chains"] != "error":  # (complexes: what the model saw of their chains)
        linker = facts.get("linker_length")
        counted = facts.get("residues", {})  # (--residues: every protein's attributes read, complexes counted)
        of = (f", {counted['complexes']:,} of {console.counted(counted['counted'], 'protein')}"
              if "complexes" in counted else "")
        lines.append(("complexes", (f"{facts['chains']} ({linker} glycines between chains)"
                                    if facts["chains"] == "linker" and linker is not None else str(facts["chains"])) + of))
    if "truncated" in facts:
        lines.append(("truncated", _first_few(facts["truncated"], lambda length: f"{length:,} residues")))
    if facts.get("part"):
        lines.append(("part", str(facts["part"])))
    if "residues" in facts:
        r = facts["residues"]
        if r.get("counted"):
            proteins = console.counted(r["counted"], "protein")  # (it said "1 proteins")
            lines.append(("residues", f"{r['total']:,} in {proteins} (mean {r['mean']:,}, "
                                      f"{r['shortest']:,} to {r['longest']:,}); truncated {r['truncated']:,}, "
                                      f"chunked {r['chunked']:,}"))
        else:
            lines.append(("residues", "no lengths recorded"))
    if "failed" in facts:  # (a probabilities file has no such record)
        lines.append(("failed", _first_few(facts["failed"] or {}, str)))
    if facts.get("protrans_version") or facts.get("command_line"):
        runs = facts.get("runs")
        lines.append(("written with", f"protrans {facts.get('protrans_version', '?')}"
                                      + (f" ({runs} runs; the last:)" if runs and runs > 1 else "")))
        if facts.get("command_line"):
            lines.append(("command", str(facts["command_line"])))
    return _aligned(lines)


def _first_few(items: dict, said) -> str:
    """`N (id: what; id: what; id: what; ...)`: how many of `items` (id -> its detail, `said` in
    words), the first three named (--json holds them all)."""
    shown = "; ".join(f"{brief(ident)}: {said(detail)}" for ident, detail in list(items.items())[:3])
    return f"{len(items):,}" + (f" ({shown}{'; ...' if len(items) > 3 else ''})" if items else "")


def _aligned(lines: list[tuple[str, str]]) -> list[str]:
    """(name, value) pairs as `name:` lines with the values in one column; a value escaped as a
    message is (`errors.escaped`: Unicode's line separators and format characters too, which split
    or reversed a line that named an id holding them)."""
    from protrans_cli.errors import escaped
    from protrans_cli.io.files import utf8_text

    # (utf8_text first: a file name's UTF-8 bytes read under LC_ALL=C are shown as the name, `é`)
    width = max(len(name) for name, _ in lines)
    return [f"{name + ':':<{width + 1}} {escaped(utf8_text(value))}" for name, value in lines]

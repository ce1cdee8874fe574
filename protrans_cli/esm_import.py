"""`protrans import-esm`: fair-esm `esm-extract` outputs (one LABEL.pt per protein) into one
embeddings file, the one `protrans embed` writes for the same model and settings.

    summary = import_esm(["esm_out/"], "esm.h5", fasta="proteins.fa")

esm-extract (fair-esm's scripts/extract.py) saves for each protein a dict `{"label": header line,
"representations": {layer: (L, D)}, "mean_representations": {layer: (D,)}, ...}` whose rows are
residues 1..L (no <cls>/<eos>), cut at --truncation_seq_length (1022 by default). Every file is
read with `torch.load(weights_only=True)`: nothing but tensors and plain values is unpickled.
A first pass maps each file (no tensor is read) and checks everything that can be checked before
writing: its structure, the layers and kinds asked for, one embedding width, one file per id,
and with a FASTA each protein's row count against its sequence. The second pass reads one file
at a time into OUTPUT.partial, renamed when complete and removed if not (nothing was computed).
What is held per protein is its path, label and two counts.

Layers are esm-extract's numbers (0 the embedding layer .. N the last block); the file records
them as embed does, counted from the last (`layers` -1 .. -(N + 1), `num_hidden_states` N + 1),
where N comes from the model (`model`: a catalogued ESM checkpoint, or a fair-esm name such as
esm2_t48_15B_UR50D), else is taken to be the highest layer in the files (esm-extract's default
`--repr_layers -1` stores only the last).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protrans_cli.errors import InputError, UsageError, a_or_an, at_least, expect_path, one_of, option
from protrans_cli.io.h5 import LAYOUTS, PER_PROTEIN, PER_RESIDUE, STORAGE_DTYPES

FAMILY = "esm"
SOURCE = "esm-extract"
POOLING = "mean over residue tokens (special tokens excluded)"  # embed's, and esm-extract's `mean`
DEFAULT_TRUNCATION = 1022  # esm-extract's --truncation_seq_length
BOS = "bos_representations"  # esm-extract --include bos: the hidden state of <cls>
BOS_POOLING = "cls: the hidden state of the <cls> token"  # embed --pooling cls's words for an ESM model
_LAYERS_IN_NAME = re.compile(r"(?:^|[/_])esm[0-9a-z]*_t(\d+)_")  # esm2_t33_650M_UR50D: 33 blocks


@dataclass
class ImportSummary:
    proteins: int = 0          # written
    layers: list = field(default_factory=list)  # esm-extract's numbers, in the file's order
    truncated: int = 0         # proteins esm-extract cut short (known only with a FASTA)
    failed: dict = field(default_factory=dict)  # id -> why (values beyond the storage dtype, NaN)


@dataclass
class _Entry:
    """One file as the first pass found it."""

    path: Path
    label: str
    ident: str
    rows: int                    # L: the rows kept (from the means alone and without a FASTA, unknown: 0)
    header: str = ""             # the FASTA's header line (with a FASTA), else the label
    sequence: str | None = None  # the normalised sequence (with a FASTA)


def import_esm(inputs, output, *, fasta=None, layers=(), per_residue: bool | None = None,
               per_protein: bool | None = None, layout: str = "grouped", storage_dtype: str = "float32",
               model: str | None = None, truncation_seq_length: int = DEFAULT_TRUNCATION, force: bool = False,
               command_line: str | None = None, bos: bool = False) -> ImportSummary:
    """Write the esm-extract outputs `inputs` (directories of `.pt` files, searched recursively as
    esm-extract makes folders of labels with `/`, and `.pt` files) into `output`.

    `layers`: esm-extract layer numbers (negative: counted from the last, as --repr_layers);
    default the highest in the files. `per_residue`/`per_protein`: the kinds (both None: per
    protein, and per residue too where the files hold rows and the layout is grouped).
    `fasta`: the sequences extracted, for the `checksum`, `length` and `truncated_from`
    attributes embed records. `model`: the `model` attribute (default "esm-extract").
    `truncation_seq_length`: esm-extract's (its default 1022), recorded as embed's `max_length`
    with `long_policy` truncate.
    """
    from protrans_cli.io.files import checked_hdf5_output, hdf5_output_in_use, output_lock, refuse_other_format_name

    inputs = _checked_arguments(inputs, output, storage_dtype, truncation_seq_length, model)
    one_of(layout, LAYOUTS, "--layout", keyword="layout")
    layers = tuple(layers or ())
    if not all(isinstance(k, int) and not isinstance(k, bool) for k in layers):
        raise UsageError(f"layers are esm-extract layer numbers (ints), got {layers!r:.60}")
    if len(set(layers)) != len(layers):
        raise UsageError(f"{option('--layer given twice', 'layers holds a layer twice')}: "
                         f"{', '.join(map(str, layers))}")
    if bos and per_residue:
        raise UsageError(f"{option('--bos', 'bos=True')} imports per-protein vectors (the <cls> token's): no "
                         + option("--per-residue", "per_residue=True"))
    if per_residue and layout == "stacked":
        raise UsageError("the stacked layout holds per-protein vectors only: "
                         + option("choose --per-protein alone", "leave out per_residue=True"))
    if per_residue and per_protein and layout == "flat":
        raise UsageError("the flat layout holds one kind only: "
                         + option("choose --per-residue or --per-protein", "per_residue=True or per_protein=True, "
                                  "not both"))
    output = checked_hdf5_output(Path(output), "the imported embeddings")
    paths = _pt_files(inputs, output)
    _refuse_output_naming_fasta(output, fasta)
    refuse_other_format_name(output, "-o", "the imported embeddings", keyword="output")
    with output_lock(output, hdf5_output_in_use()):
        return _import_locked(paths, output, fasta=None if fasta is None else Path(fasta), layers=layers,
                              per_residue=per_residue, per_protein=per_protein, layout=layout,
                              storage_dtype=storage_dtype, model=model, truncation=truncation_seq_length,
                              force=force, command_line=command_line, bos=bos)


def _checked_arguments(inputs, output, storage_dtype: str, truncation_seq_length, model=None) -> list:
    """The inputs as a list, after the checks both imports make of their arguments (before any file
    is read)."""
    entry = _catalog_entry(model) if isinstance(model, str) else None
    if entry is not None and entry.get("family") != FAMILY:
        # (-m prot_t5_xl_half was recorded as an ESM model's files: merged with, or fit against,
        # embed's files of ProtT5 they are not)
        raise UsageError(f"{option(f'-m {model}', f'model {model!r}')} is {a_or_an(str(entry.get('family')))} "
                         f"checkpoint; esm-extract runs ESM models: give {option('-m', 'model')} the ESM model it ran "
                         "(e.g. esm2_t33_650M_UR50D)")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise UsageError("import-esm needs esm-extract's output: a directory of .pt files, or .pt files")
    if not all(isinstance(p, (str, os.PathLike)) for p in inputs):
        raise UsageError(f"import-esm: inputs must be paths, got {inputs!r:.60}")
    expect_path(output, "import-esm: output")
    one_of(storage_dtype, STORAGE_DTYPES, "--storage-dtype", keyword="storage_dtype")
    if isinstance(truncation_seq_length, bool) or not isinstance(truncation_seq_length, int):
        raise UsageError(f"{option('--truncation-seq-length', 'truncation_seq_length')} must be a whole number, got "
                         f"{type(truncation_seq_length).__name__} {truncation_seq_length!r:.40}")
    at_least(truncation_seq_length, 1, "--truncation-seq-length", keyword="truncation_seq_length")
    return inputs


def _refuse_output_naming_fasta(output: Path, fasta) -> None:
    """`-o` naming --fasta, as embed refuses it: it was "exists: give --force to replace it" (a
    hint to replace the user's FASTA, which --force then refused as no HDF5 file)."""
    from protrans_cli.io.files import input_named_by
    from protrans_cli.io.h5 import partial_path

    for target in (output, partial_path(output)):
        if fasta is not None and input_named_by(target, (fasta,)):
            raise UsageError(f"{target} is also the {option('--fasta', 'fasta')} input: writing it would replace the "
                             f"FASTA (choose another {option('-o', 'output')})")


def _pt_files(inputs, output: Path) -> list[Path]:
    """The `.pt` files the inputs name, each once: a directory's (recursively, sorted), a file as given."""
    from protrans_cli.io.h5 import partial_path

    found: list[Path] = []
    seen: dict[Path, str] = {}  # a file's real path -> how it was named (the argument that led to it)
    for given in map(Path, inputs):
        if str(given) == "-":
            raise UsageError("esm-extract's outputs are read from files, not stdin ('-'): give their directory")
        if given.resolve() in (output.resolve(), partial_path(output).resolve()):
            raise UsageError("is also the output: write the imported file elsewhere", path=str(given))
        if given.is_dir():
            files, others = [], []
            for path in sorted(given.rglob("*.pt")):
                (files if path.is_file() else others).append(path)
            if others:  # (a FIFO, a device or a folder named X.pt: passed over, and said so)
                from protrans_cli import console

                console.warn(f"{given}: {len(others):,} entr{'y' if len(others) == 1 else 'ies'} named *.pt "
                             f"that {'is' if len(others) == 1 else 'are'} not a regular file, passed over "
                             f"(first: {others[0]})")
            if not files:
                raise InputError("holds no .pt files (esm-extract writes one LABEL.pt per protein)", path=str(given))
        elif given.is_file():
            files = [given]
        else:
            raise InputError("no such file or directory" if not given.exists() else "not a file", path=str(given))
        how = f"in {given}" if given.is_dir() else f"as {given}"
        for path in files:
            real = path.resolve()
            if real in seen:
                # (a file given and its directory too, named "twice (also as <itself>)")
                raise UsageError(f"named twice ({seen[real]} and {how}): give each file or directory once",
                                 path=str(path))
            seen[real] = how
            found.append(path)
    return found


def _not_torch(path: Path) -> str | None:
    """What a file torch.load refused is where its first bytes show torch.save never wrote it
    (torch writes a zip archive or a pickle, protocol 2+ starting with 0x80); None otherwise."""
    from protrans_cli.io.fasta import begins_fasta

    try:
        with open(path, "rb") as stream:
            head = stream.read(4096)
    except OSError:
        return None
    if head.startswith((b"PK", b"\x80")):
        return None
    if head.startswith(b"\x89HDF"):
        what = ("it is an HDF5 file, such as embed writes: read it as it is (protrans info, export, merge), "
                "with no import")
    elif begins_fasta(head):
        what = "it is a FASTA file: embed its proteins with protrans embed FASTA -m esm2_t33_650M_UR50D"
    elif not head:
        what = "the file is empty"
    else:
        what = "it is not a file torch.save wrote (neither a zip archive nor a pickle)"
    return what


def load_pt(path: Path, *, mmap: bool = False) -> dict:
    """One esm-extract file, its tensors mapped (`mmap`) or read; a file that is not one is an
    InputError naming it. Never unpickles anything but tensors and plain values."""
    import pickle
    import warnings

    import torch

    from protrans_cli.io.files import utf8_path_problem

    # torch maps a file by the UTF-8 spelling of its name: one that is not UTF-8 (byte 0xff, any
    # non-ASCII name under LC_ALL=C) was a UnicodeEncodeError, reported as a damaged file. Read.
    mmap = mmap and utf8_path_problem(path) is None
    try:
        with warnings.catch_warnings():  # (torch's own about a plain pickle's protocol: the error is one line)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as exc:  # (a file of torch's legacy format cannot be mapped: read it)
                if not mmap or "mmap" not in str(exc):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch's unpickler fails on foreign bytes in many ways
        # (a text file named .pt: its 'h' read as a memo lookup, a KeyError traceback)
        if isinstance(exc, MemoryError):
            raise
        if (other := _not_torch(path)) is not None:
            # (an HDF5 or a FASTA given here was "it holds objects other than tensors and plain
            # values": torch's unpickler had read its first byte as an opcode)
            raise InputError(f"not an esm-extract output: {other}", path=str(path)) from None
        if isinstance(exc, pickle.UnpicklingError) or str(exc).startswith("Weights only load failed"):
            why = "it holds objects other than tensors and plain values, which import-esm never unpickles"
            if re.search(r"GLOBAL (argparse\.Namespace|omegaconf\.)", str(exc)):  # (the config fair-esm pickles)
                why += (f"; it looks like a fair-esm model checkpoint, which protrans import-model {path} -o DIR "
                        "converts into a model directory")
        elif isinstance(exc, OSError) and not isinstance(exc, EOFError):
            why = f"cannot be read ({exc.strerror or exc})"
        else:
            why = "torch cannot read it (damaged, or not a file torch.save wrote)"
        raise InputError(f"not an esm-extract output: {why}", path=str(path)) from None
    if not isinstance(obj, dict):
        raise InputError(f"not an esm-extract output: it holds {a_or_an(type(obj).__name__)}, not esm-extract's dict "
                         "of label and representations", path=str(path))
    label = obj.get("label")
    if not isinstance(label, str):
        raise InputError("not an esm-extract output: no 'label' string (esm-extract saves the FASTA header there)",
                         path=str(path))
    return obj


def _layer_dict(obj: dict, key: str, path: Path) -> dict | None:
    """`obj[key]` ({layer: tensor}) checked, or None where the file has no such entry."""
    import torch

    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, int) and isinstance(v, torch.Tensor)
                                              for k, v in value.items()):
        raise InputError(f"its '{key}' is not esm-extract's {{layer number: tensor}} dict", path=str(path))
    for layer, tensor in value.items():
        if not tensor.is_floating_point():
            raise InputError(f"its '{key}' layer {layer} holds {tensor.dtype} values, not floating point",
                             path=str(path))
    return value


def _available(obj: dict, path: Path, bos: bool = False) -> tuple[dict | None, dict | None]:
    """(rows, per-protein vectors) of a file: `mean_representations`, or with `bos` its
    `bos_representations` (the <cls> token's; no rows then: a mean of them is another pooling)."""
    if bos:
        return None, _layer_dict(obj, BOS, path)
    return _layer_dict(obj, "representations", path), _layer_dict(obj, "mean_representations", path)


def _catalog_entry(model: str | None) -> dict | None:
    """The catalogued checkpoint a name or hub id names, or None."""
    if not model:
        return None
    from protrans_cli.catalog import _catalog

    return next((entry for entry in _catalog()["checkpoints"] if model in (entry["name"], entry.get("hub_id"))),
                None)


def model_layers(model: str | None) -> int | None:
    """The blocks of the ESM model a name gives (a catalogued checkpoint, its hub id, a local
    model directory's config.json, or a fair-esm name `esm*_tN_...`), or None."""
    entry = _catalog_entry(model)
    if entry is not None:
        return int(entry["num_layers"]) if entry.get("family") == FAMILY else None
    if (config := _directory_config(model)) is not None:
        return config["num_hidden_layers"]
    found = _LAYERS_IN_NAME.search(model) if model else None
    return int(found.group(1)) if found else None


def model_width(model: str | None) -> int | None:
    """The embedding width of a catalogued ESM checkpoint (by name or hub id) or of a local model
    directory (its config.json), or None."""
    entry = _catalog_entry(model)
    if entry is None:
        config = _directory_config(model)
        return None if config is None else config["hidden_size"]
    if entry.get("family") != FAMILY or not entry.get("embedding_dim"):
        return None
    return int(entry["embedding_dim"])


def _directory_config(model: str | None) -> dict | None:
    """The config.json of the ESM model directory `model` names (`hf download ... --local-dir DIR`,
    what embed's `-m DIR` reads), where it gives the number of blocks and the width; else None."""
    import json

    if not model:
        return None
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # (no such directory, no config: a name, as before)
        return None
    if not isinstance(config, dict) or config.get("model_type") != FAMILY:
        return None
    if not all(isinstance(config.get(k), int) and config[k] > 0 for k in ("num_hidden_layers", "hidden_size")):
        return None
    return config


def _import_locked(paths: list[Path], output: Path, *, fasta, layers, per_residue, per_protein, layout,
                   storage_dtype, model, truncation, force, command_line, bos=False) -> ImportSummary:
    from protrans_cli import __version__, console
    from protrans_cli.io.h5 import EmbeddingsWriter, output_free, remove_partial

    partial = output_free(output, force, "embed, merge or import-esm")

    # The kinds and layers, from the first file (every other must hold them)
    rows0, means0 = _available(load_pt(paths[0], mmap=True), paths[0], bos)
    if per_residue is None and per_protein is None:
        per_protein, per_residue = True, rows0 is not None and layout == "grouped"
    kinds = tuple(k for k, on in ((PER_RESIDUE, per_residue), (PER_PROTEIN, per_protein)) if on)
    if not kinds:
        raise UsageError("nothing to import: give " + option("--per-residue, --per-protein or neither",
                                                             "per_residue=True, per_protein=True or neither"))
    present = sorted(set(rows0 or {}) | (set(means0 or {}) if not per_residue else set()))
    if not present:
        need = ("'representations' (esm-extract --include per_tok)" if per_residue else
                f"'{BOS}' (esm-extract --include bos)" if bos else
                "'representations' or 'mean_representations' (esm-extract --include per_tok or mean)")
        raise InputError(f"holds no {need}", path=str(paths[0]))
    blocks = model_layers(model)
    last = blocks if blocks is not None else max(present)
    chosen = [k if k >= 0 else last + 1 + k for k in layers] or [max(present)]
    if not layers and chosen[0] > last:
        # (-m esm2_t30_150M_UR50D over esm2_t33_650M's files said "--layer 33: the model's layers
        # are 0 .. 30", exit 2, of a --layer never given)
        raise InputError(f"holds layer {chosen[0]}, but {option(f'-m {model}', f'model {model!r}')} has layers 0 .. "
                         f"{last}: give {option('-m', 'model')} the model esm-extract ran", path=str(paths[0]))
    for given, k in zip(layers or chosen, chosen):
        if not 0 <= k <= last:
            raise UsageError(f"{option(f'--layer {given}', f'layer {given}')}: the model's layers are 0 .. {last}" +
                             ("" if blocks is not None else f" (the highest in the files; {option('--model', 'model')} "
                                                            "names the model and its number of layers)"))
    # (--layer -1 --layer 33 of a 33-block model: one layer written twice, `layers` [-1, -1], as
    # embed refuses it)
    for i, k in enumerate(chosen):
        if k in chosen[:i]:
            first = layers[chosen.index(k)]
            raise UsageError(f"{option(f'--layer {first} and --layer {layers[i]}', f'layers {first} and {layers[i]}')} "
                             f"name one layer ({k} of 0 .. {last}): each is written once")
    states = last + 1

    # First pass: every file's structure, lengths and id, before anything is written
    sequences = _fasta_records(fasta) if fasta is not None else None
    entries, owner, dim = [], {}, None
    for path in paths:
        obj = load_pt(path, mmap=True)
        entry, width = _check_entry(obj, path, chosen, per_residue, per_protein, truncation, sequences, fasta,
                                    bos=bos)
        if width != dim and dim is not None:
            raise InputError(f"holds embeddings of width {width}, {entries[0].path} of width {dim}: one model's "
                             "outputs only", path=str(path))
        dim = width
        if entry.ident in owner:
            raise InputError(f"protein id {entry.ident!r} is also that of {owner[entry.ident]} (the label's first "
                             "word names a protein): each id once", path=str(path))
        owner[entry.ident] = path
        entries.append(entry)
        del obj
    del owner, sequences
    # (-m esm2_t33_650M_UR50D over esm2_t6_8M's files was written as 650M's: a head fit on it then met
    # embed's 1280-d files of that model)
    if (width := model_width(model)) is not None and dim is not None and dim != width:
        raise InputError(f"holds embeddings of width {dim}, but -m {model} embeds in {width}: give -m the model "
                         "esm-extract ran", path=str(entries[0].path))
    if blocks is None:
        # (esm-extract --repr_layers 32 alone, of a 33-block model, would be recorded as the last layer)
        named = (f"-m {model} names no number of layers (neither a catalogued ESM checkpoint, an ESM model "
                 "directory nor a fair-esm name esm*_tN_...)") if model else "no -m naming the model"
        console.warn(f"{named}: layer {last}, the highest in the files, is taken to be its last "
                     f"(what esm-extract's default --repr_layers -1 stores); give -m (e.g. esm2_t33_650M_UR50D) "
                     "to number the layers as embed does and to match embed's files of that model")

    # (a model directory as its absolute path, as embed records it: as typed, `RUN`, the parts of
    # embed and import-esm merged only from the same working directory)
    attrs = {"model": _model_attr(model) if model else SOURCE, "revision": "", "commit": "", "family": FAMILY,
             "layers": [k - states for k in chosen], "num_hidden_states": states,
             "pooling": BOS_POOLING if bos else POOLING,
             "compute_dtype": "float32",  # (esm-extract never casts the model)
             "embedding_dim": dim, "protrans_version": __version__,
             "command_line": command_line or "protrans_cli.esm_import.import_esm() called from Python",
             "max_length": truncation, "long_policy": "truncate", "part": "", "packing": False, "compiled": False,
             "imported_from": SOURCE}
    if force:
        remove_partial(partial)
    summary = ImportSummary(layers=chosen)
    try:
        with EmbeddingsWriter(output, kinds=kinds, layout=layout, storage_dtype=storage_dtype, attrs=attrs) as writer:
            for entry in entries:
                _write_entry(writer, entry, chosen, kinds, summary, dim, bos=bos)
            writer.flush(failures=True)
            summary.failed = dict(writer.failed)
    except BaseException:
        remove_partial(partial)  # (nothing was computed: importing again costs what this did)
        raise
    if summary.failed:
        console.warn(f"{output}: {len(summary.failed)} protein(s) not written (the 'failed' attribute): "
                     f"{next(iter(summary.failed.values()))}")
    return summary


def _fasta_records(fasta: Path) -> dict:
    """id -> (header, normalised sequence) of a FASTA file (embed's normalisation: the checksum's).
    A record that cannot be imported has its refusal in place of the sequence: an error only
    where a .pt file is of that protein (_fasta_entry)."""
    from protrans_cli.io.fasta import NUL_HEADER, parse_fasta
    from protrans_cli.io.files import open_input
    from protrans_cli.residues import SequenceRejected, normalise

    records: dict = {}
    name = str(fasta)
    with open_input(fasta, name=name) as stream:
        # (a header with a NUL byte is its record's problem, as an invalid sequence is: it refused
        # the whole FASTA, where no .pt file was of that record too, as embed and variants read it)
        for rec in parse_fasta(stream, name, nul_headers=True):
            if rec.id in records:
                raise InputError(f"id {rec.id!r} is in the FASTA twice", path=name, line=rec.line)
            if "\x00" in rec.description:
                records[rec.id] = (rec.description, InputError(NUL_HEADER, path=name, line=rec.line, record=rec.id))
                continue
            try:
                records[rec.id] = (rec.description, normalise(rec.sequence, rare="keep"))
            except SequenceRejected as exc:
                records[rec.id] = (rec.description, exc)
    return records


def _check_entry(obj, path, chosen, per_residue, per_protein, truncation, sequences, fasta,
                 bos: bool = False) -> tuple[_Entry, int]:
    """A file's entry and embedding width, every check of it made (see the module docstring)."""
    from protrans_cli.io.fasta import header_id

    label = obj["label"]
    ident = header_id(label)
    if not ident:
        raise InputError(f"its label {label!r} has no id (the header's first word)", path=str(path))
    rows, means = _available(obj, path, bos)
    vectors, include = (BOS, "--include bos") if bos else ("mean_representations", "--include mean")
    shapes = []
    for k in chosen:
        if rows is not None and k in rows:
            shapes.append(("representations", k, tuple(rows[k].shape), 2))
        elif per_residue:
            raise InputError(_missing("representations", k, rows, "--include per_tok"), path=str(path))
        if per_protein and k in (means or {}):
            shapes.append((vectors, k, tuple(means[k].shape), 1))
        elif per_protein and (rows is None or k not in rows):
            raise InputError(_missing(vectors, k, means, include) + ("" if bos else " nor its per-residue rows"),
                             path=str(path))
    dims = {s[-1] if s else None for _, _, s, _ in shapes}
    for what, k, shape, ndim in shapes:
        if len(shape) != ndim or 0 in shape:
            want = "(L, D) rows" if ndim == 2 else "a (D,) vector"
            raise InputError(f"its '{what}' layer {k} has shape {shape}, not {want}", path=str(path))
    if len(dims) != 1:
        raise InputError("its layers have different widths: damaged, or not one model's output", path=str(path))
    lengths = {shape[0] for what, _, shape, _ in shapes if what == "representations"}
    if len(lengths) > 1:
        raise InputError(f"its layers hold different numbers of rows ({', '.join(map(str, sorted(lengths)))})",
                         path=str(path))
    count = lengths.pop() if lengths else 0
    if count > truncation:
        raise InputError(f"holds {count} rows, more than {_truncation(truncation)}: give the value esm-extract ran "
                         "with", path=str(path))
    entry = _Entry(path, label, ident, count, header=label)
    if sequences is not None:
        entry.header, sequence = _fasta_entry(sequences, ident, path, fasta)
        expected = min(len(sequence), truncation)
        if count and count != expected:
            raise InputError(f"holds {count} rows; its sequence in {fasta} has {len(sequence)} residues"
                             f"{f', cut at {truncation}' if len(sequence) > truncation else ''}, {expected} rows: "
                             "another sequence (or a FASTA with gaps, which esm-extract embeds as rows)"
                             + _cut_otherwise(count, len(sequence)), path=str(path))
        entry.sequence, entry.rows = sequence, expected
    return entry, dims.pop()


def _truncation(value: int) -> str:
    """import-esm's --truncation-seq-length and its value, as the message's reader gives them."""
    return option(f"--truncation-seq-length {value}", f"truncation_seq_length={value}")


def _cut_otherwise(count: int, residues: int) -> str:
    """A row count short of the sequence may be esm-extract's cut at another length: said so."""
    if 0 < count < residues:
        return f", or esm-extract ran with --truncation_seq_length {count}: give {_truncation(count)}"
    return ""


def _fasta_entry(sequences: dict, ident: str, path: Path, fasta) -> tuple[str, str]:
    """(header, normalised sequence) of protein `ident` in the FASTA given (`sequences`:
    _fasta_records'), or the InputError naming the file that holds it."""
    from protrans_cli.residues import SequenceRejected

    found = sequences.get(ident)
    if found is None:
        # (its header damaged by a NUL byte inside the id: that refusal, which says why)
        damaged = (v[1] for k, v in sequences.items() if "\x00" in k and k.split("\x00")[0] == ident)
        if (refusal := next(damaged, None)) is not None:
            raise refusal
        raise InputError(f"protein {ident!r} is not in {fasta}", path=str(path))
    header, sequence = found
    if isinstance(sequence, SequenceRejected):
        raise InputError(f"protein {ident!r}: its sequence in {fasta} is refused ({sequence.detail})", path=str(path))
    if isinstance(sequence, InputError):  # (its header's refusal, which names the record by its line)
        raise sequence
    return header, sequence


def _missing(key: str, layer: int, found: dict | None, include: str) -> str:
    if found is None:
        return f"has no '{key}' (esm-extract {include})"
    return f"has no layer {layer} in '{key}' (it holds {', '.join(map(str, sorted(found)))})"


def _write_entry(writer, entry: _Entry, chosen, kinds, summary: ImportSummary, dim: int, bos: bool = False) -> None:
    """One file's arrays into the writer, as embed writes a protein (see embed._write_unit)."""
    from protrans_cli.embedders import beyond_range, fits, mean_rows

    def changed(what: str) -> InputError:
        return InputError(f"changed during the import ({what}): import again", path=str(entry.path))

    obj = load_pt(entry.path)  # (read again: changed since the first pass is refused below)
    rows, means = _available(obj, entry.path, bos)
    label = obj["label"]
    if label != entry.label:
        raise changed("another label")
    per_residue = per_protein = None
    try:  # (the first pass checked these layers, shapes and widths: a file rewritten since may lack them)
        if PER_RESIDUE in kinds or any(k not in (means or {}) for k in chosen):
            per_residue = np.stack([rows[k].float().numpy() for k in chosen])  # (n_layers, L, D)
            if per_residue.ndim != 3 or per_residue.shape[1] != entry.rows:
                raise changed("another number of rows")
        if PER_PROTEIN in kinds:
            per_protein = np.stack([means[k].float().numpy() if k in (means or {}) else mean_rows(per_residue[i])
                                    for i, k in enumerate(chosen)])  # (n_layers, D)
    except (KeyError, TypeError, ValueError, IndexError):
        raise changed("other layers or shapes") from None
    if any(a is not None and a.shape[-1] != dim for a in (per_residue, per_protein)) or \
            (per_protein is not None and per_protein.ndim != 2):
        raise changed(f"another embedding width than {dim}")
    del obj, rows, means
    for values in (per_residue, per_protein):
        if values is None:
            continue
        problem = None
        if not np.isfinite(values).all():
            problem = "NaN or infinity in esm-extract's output"
        elif not fits(values, writer.storage_dtype):
            problem = beyond_range(values, writer.storage_dtype.name).reason
        if problem:
            writer.record_failure(entry.ident, problem)
            return
    squeeze = (lambda a: None if a is None else (a[0] if a.shape[0] == 1 else a))
    # (from the means alone and without a FASTA the length is not known: no `length` attribute)
    extra, sequence, length = {}, None, entry.rows or None
    if entry.sequence is not None:
        sequence = entry.sequence[:entry.rows]  # the kept prefix: its checksum, as embed's truncate records
        if len(entry.sequence) > len(sequence):
            extra["truncated_from"] = len(entry.sequence)
            summary.truncated += 1
        length = len(sequence)
    nbytes = sum(a.size * writer.storage_dtype.itemsize for a in (per_residue, per_protein)
                 if a is not None and (a is per_protein or PER_RESIDUE in kinds))
    writer.ensure_room(nbytes, "the next protein")
    writer.write(entry.ident, entry.header, sequence, length=length, extra_attrs=extra,
                 per_residue=squeeze(per_residue) if PER_RESIDUE in kinds else None,
                 per_protein=squeeze(per_protein))
    writer.flush_due()
    summary.proteins += 1


# --- contacts ------------------------------------------------------------------------------------

def import_esm_contacts(inputs, output, *, fasta=None, storage_dtype: str = "float16", model: str | None = None,
                        truncation_seq_length: int = DEFAULT_TRUNCATION, force: bool = False,
                        command_line: str | None = None) -> ImportSummary:
    """Write the contact maps of esm-extract's outputs (`--include contacts`: each LABEL.pt's
    `contacts`, (L, L)) into the file `protrans contacts` writes (`/contacts/<id>`), with the same
    checks in a first pass and the same attributes as the embeddings' import."""
    from protrans_cli.contacts import CONTACTS_DESCRIPTION
    from protrans_cli.io.files import checked_hdf5_output, hdf5_output_in_use, output_lock, refuse_other_format_name
    from protrans_cli.io.h5 import CONTACTS

    # (as import_esm's: a TypeError from pathlib where the embeddings' import says which argument)
    inputs = _checked_arguments(inputs, output, storage_dtype, truncation_seq_length, model)
    output = checked_hdf5_output(Path(output), "the imported contact maps")
    paths = _pt_files(inputs, output)
    _refuse_output_naming_fasta(output, fasta)
    refuse_other_format_name(output, "-o", "the imported contact maps", keyword="output")
    with output_lock(output, hdf5_output_in_use()):
        from protrans_cli import __version__
        from protrans_cli.io.h5 import EmbeddingsWriter, output_free, remove_partial

        partial = output_free(output, force, "contacts or import-esm")
        sequences = _fasta_records(Path(fasta)) if fasta is not None else None
        entries, owner = [], {}
        for path in paths:  # every file checked before anything is written
            entry = _check_contacts(load_pt(path, mmap=True), path, truncation_seq_length, sequences, fasta)
            if entry.ident in owner:
                raise InputError(f"protein id {entry.ident!r} is also that of {owner[entry.ident]} (the label's "
                                 "first word names a protein): each id once", path=str(path))
            owner[entry.ident] = path
            entries.append(entry)
        attrs = {"model": _model_attr(model) if model else SOURCE, "revision": "", "commit": "", "family": FAMILY,
                 "compute_dtype": "float32", "protrans_version": __version__,
                 "command_line": command_line or "protrans_cli.esm_import.import_esm_contacts() called from Python",
                 "max_length": truncation_seq_length, "long_policy": "truncate", "contacts": CONTACTS_DESCRIPTION,
                 "imported_from": SOURCE}
        if force:
            remove_partial(partial)
        summary = ImportSummary()
        try:
            with EmbeddingsWriter(output, kinds=(CONTACTS,), layout="grouped", storage_dtype=storage_dtype,
                                  attrs=attrs) as writer:
                for entry in entries:
                    _write_contacts(writer, entry, summary)
                writer.flush(failures=True)
                summary.failed = dict(writer.failed)
        except BaseException:
            remove_partial(partial)
            raise
    return summary


def _check_contacts(obj, path: Path, truncation: int, sequences, fasta) -> _Entry:
    import torch

    from protrans_cli.io.fasta import header_id

    label = obj["label"]
    ident = header_id(label)
    if not ident:
        raise InputError(f"its label {label!r} has no id (the header's first word)", path=str(path))
    maps = obj.get("contacts")
    if maps is None:
        raise InputError("has no 'contacts' (esm-extract --include contacts)", path=str(path))
    if not isinstance(maps, torch.Tensor) or not maps.is_floating_point() or maps.dim() != 2 \
            or maps.shape[0] != maps.shape[1] or maps.shape[0] == 0:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        if isinstance(maps, torch.Tensor):  # (the dtype named: "is (3, 3), not an (L, L) ... map" of a square)
            shape = f"{shape} {str(maps.dtype).removeprefix('torch.')}"
        raise InputError(f"its 'contacts' is {shape}, not an (L, L) floating-point map", path=str(path))
    count = int(maps.shape[0])
    if count > truncation:
        raise InputError(f"holds a map of {count} residues, more than {_truncation(truncation)}: give the value "
                         "esm-extract ran with", path=str(path))
    entry = _Entry(path, label, ident, count, header=label)
    if sequences is not None:
        entry.header, sequence = _fasta_entry(sequences, ident, path, fasta)
        if count != min(len(sequence), truncation):
            raise InputError(f"holds a map of {count} residues; its sequence in {fasta} has {len(sequence)}: "
                             "another sequence" + _cut_otherwise(count, len(sequence)), path=str(path))
        entry.sequence = sequence
    return entry


def _write_contacts(writer, entry: _Entry, summary: ImportSummary) -> None:
    obj = load_pt(entry.path)  # (read again: a file changed since the first pass is refused)
    maps = obj.get("contacts")
    if obj["label"] != entry.label or getattr(maps, "shape", None) != (entry.rows, entry.rows):
        raise InputError("changed during the import: import again", path=str(entry.path))
    values = maps.float().numpy()
    del obj, maps
    if not np.isfinite(values).all():
        writer.record_failure(entry.ident, "NaN or infinity in esm-extract's contact map")
        return
    from protrans_cli.embedders import beyond_range, fits

    if not fits(values, writer.storage_dtype):  # (cast, they became inf with numpy's overflow warning)
        writer.record_failure(entry.ident, beyond_range(values, writer.storage_dtype.name).reason)
        return
    extra, sequence, length = {}, None, entry.rows
    if entry.sequence is not None:
        sequence = entry.sequence[:entry.rows]
        if len(entry.sequence) > len(sequence):
            extra["truncated_from"] = len(entry.sequence)
            summary.truncated += 1
    writer.ensure_room(values.size * writer.storage_dtype.itemsize, "the next protein")
    writer.write(entry.ident, entry.header, sequence, length=length, extra_attrs=extra,
                 contacts=values.astype(writer.storage_dtype))
    writer.flush_due()
    summary.proteins += 1


def _model_attr(name: str) -> str:
    """embed's `model` attribute for `-m name` (a local directory as its resolved path)."""
    from protrans_cli.embed import model_attr

    return model_attr(str(name))


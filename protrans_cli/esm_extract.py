"""fair-esm's `esm-extract`, the same command line (`protrans esm-extract`): a FASTA to a folder
of one `<id>.pt` file a protein, for the shell scripts and Snakemake rules written around it.

    from protrans_cli.esm_extract import ExtractOptions, esm_extract
    esm_extract("proteins.fa", "out/", ExtractOptions(model="esm2_t33_650M_UR50D", repr_layers=(0, 32, 33),
                                                      include=("mean", "per_tok")))

Nothing is computed here: `embed` writes the rows (and the `<cls>` vectors for `bos`) into a
working HDF5 file, `contacts` the contact maps into another, and the `.pt` files are written from
them as `export --format esm` writes its folder (the model loaded once: the contacts' run hands
it to embed's). Each file is `torch.save` of esm-extract's dict,
float32 tensors by layer, the layers numbered as esm-extract numbers them (0 the embedding layer
.. N the last; negative `repr_layers` count from the end), only the included keys:

    {"label": header line, "representations": {layer: (L, D)}, "mean_representations": {layer: (D,)},
     "bos_representations": {layer: (D,)}, "contacts": (L, L)}

As esm-extract: each protein is cut to its first `truncation_seq_length` residues (rows, mean
and contacts all of the kept part), and computed in float32 (its model is never cast); unlike
it, the truncated proteins are said on stderr, and a file is named after the protein's id (the
header up to the first space, escaped as export escapes it), not the whole header line (a `/` in
it made esm-extract write into folders).

The working folder is the hidden `OUTPUT_DIR/.protrans-esm-extract.partial/` (PARTIAL), locked
while a run uses it; the files move into the output folder once every one is written (a SIGKILL
during the moves can leave some, each whole). A stopped or failed run leaves none of its files
in the output folder: what it computed stays in PARTIAL (embed's and contacts' partial files,
the settings it was computed with in settings.json), and `resume=True` (--resume, a protrans
addition) goes on from it through embed's and contacts' own resume, refusing other settings;
without it a run refuses to start while PARTIAL holds work. PARTIAL is removed once the files
are in place, and by a failed run that computed nothing. Stdin is copied into PARTIAL and read
again by a resumed run (pipe it the same FASTA: embed's resume refuses an id whose sequence
differs). Files of an earlier run stay, and one of the same name is replaced, as esm-extract
replaces it.

A fair-esm `.pt` file as the model (fair-esm's esm-extract takes one) is converted into
PARTIAL/model/: one path from run to run, so that embed's and contacts' resume see one model,
and kept with the work, so that a resumed run converts nothing; settings.json names the file
as the user gave it (resolved) and which file it was (size, mtime). The working folders of
earlier versions (`.esm-extract.<host>.<pid>-XXXX`, io.files.make_temporary's) that a SIGKILL
left are swept as a run starts.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protrans_cli import console
from protrans_cli.choices import INCLUDES
from protrans_cli.errors import (RESUME_WORDS, InputError, ModelError, ProtransError, RuntimeFailure, UsageError,
                                 again_with_resume, at_least, expect_options, expect_path, one_of, option,
                                 resume_option)

# the hidden folder inside OUTPUT_DIR that holds a run's work until its files are in place, and
# an interrupted run's for --resume
PARTIAL = ".protrans-esm-extract.partial"
_SETTINGS = "settings.json"  # (in PARTIAL: what its work was computed with)

# esm-extract's dict keys of each --include, in the order it writes them
FIELDS = {"per_tok": "representations", "mean": "mean_representations", "bos": "bos_representations",
          "contacts": "contacts"}
# embed's and contacts' flags, where their messages name the settings esm-extract calls otherwise
# (in this order: the longer first); an option esm-extract lacks is embed's, said so
_FLAGS = {" --long-policy chunk keeps every window within them":  # (embed's remedy for proteins beyond training)
          " keeps every protein within them, the rest cut off; protrans embed --long-policy chunk keeps every residue, "
          "in windows within them",
          "--max-length": "--truncation_seq_length", "--max-tokens": "--toks_per_batch",
          "--pooling cls": "--include bos", "--pooling mean (the default)": "--include mean",
          "--pooling mean": "--include mean", "--invalid-policy skip": "protrans embed --invalid-policy skip",
          "(e.g. -m esm2_t33_650M_UR50D or esm1b_t33_650M_UR50S)": "(e.g. esm2_t33_650M_UR50D or esm1b_t33_650M_UR50S)",
          # (the model's advice: esm-extract takes it as its first argument, MODEL_LOCATION, and has no -m)
          "pass the directory: -m DIR": "give the directory as MODEL_LOCATION",
          "give it to -m": "give it as MODEL_LOCATION",
          "give -m that directory": "give that directory as MODEL_LOCATION",
          "give -m ": "give ", ", or -m ": ", or ",
          # (embed's reason for refusing a repeated id: here two headers esm-extract told apart, `P1 a` and `P1 b`)
          "because they are the keys of the output": "because each names its file, ID.pt (ID: the header up to its "
                                                     "first space, where esm-extract names it by the whole line)"}


@dataclass
class ExtractOptions:
    """What `protrans esm-extract` can be asked for (esm-extract's options)."""

    model: str = "esm2_t33_650M_UR50D"  # esm-extract's MODEL_LOCATION: any model embed takes (-m), or a
    #                                     fair-esm .pt file (converted into PARTIAL/model/)
    repr_layers: tuple[int, ...] = (-1,)
    include: tuple[str, ...] = ()       # some of INCLUDES (esm-extract requires --include)
    toks_per_batch: int = 4096           # padded tokens per batch (embed's max_tokens)
    truncation_seq_length: int = 1022    # residues kept of each protein
    device: str = "auto"                 # esm-extract's --nogpu: "cpu"
    dtype: str = "float32"               # compute dtype (esm-extract's model is float32, on the GPU too)
    threads: int | None = None
    command_line: str | None = None
    resume: bool = False                 # go on from an interrupted run's work (PARTIAL): a protrans addition

    def validate(self) -> None:
        from protrans_cli.embed import DTYPES

        include = _included(self)
        if not include:
            raise UsageError(f"{option('--include', 'include')}: give one or more of {', '.join(INCLUDES)}")
        for item in include:
            one_of(item, INCLUDES, "--include", keyword="include")
        layers = (self.repr_layers,) if isinstance(self.repr_layers, int) else tuple(self.repr_layers)
        if not layers:
            raise UsageError(f"{option('--repr_layers', 'repr_layers')}: give one or more layers (-1 the last, 0 the "
                             "embedding layer)")
        for layer in layers:
            if not isinstance(layer, numbers.Integral) or isinstance(layer, bool):
                raise UsageError(f"{option('--repr_layers', 'repr_layers')}: whole numbers (layers), got "
                                 f"{type(layer).__name__} {layer!r:.60}")
        at_least(self.toks_per_batch, 1, "--toks_per_batch", keyword="toks_per_batch")
        at_least(self.truncation_seq_length, 1, "--truncation_seq_length", keyword="truncation_seq_length")
        one_of(self.dtype, DTYPES, "--dtype", keyword="dtype")
        from protrans_cli.embedders import encoding_words, is_weightless

        if is_weightless(str(self.model)):
            name = str(self.model)
            raise UsageError(f"{option(f'MODEL_LOCATION {name}', f'model={name}')} is embed's {encoding_words(name)}: "
                             f"it has no layers for esm-extract's files (protrans embed -m {name} writes it)")


@dataclass
class ExtractSummary:
    output: Path
    layers: list[int] = field(default_factory=list)   # esm-extract's numbers, as the files' keys
    num_records: int = 0
    num_written: int = 0
    truncated: list[str] = field(default_factory=list)  # proteins cut at truncation_seq_length
    num_replaced: int = 0        # files of an earlier run replaced by this run's of the same name
    num_resumed: int = 0         # proteins an interrupted run had computed (resume): not computed again
    failed: dict[str, str] = field(default_factory=dict)


def esm_extract(fasta, output_dir, options: ExtractOptions) -> ExtractSummary:
    """esm-extract's files (module docstring) of every protein of `fasta` in the folder
    `output_dir` (made, parents too, where it does not exist). Proteins that could not be computed
    (out of memory, NaN) have no file: they are in `summary.failed`."""
    from protrans_cli.io.files import folder_made

    expect_path(fasta, "fasta", " (a str or pathlib.Path)")
    expect_path(output_dir, "output_dir", " (a str or pathlib.Path)")
    expect_options(options, ExtractOptions, "options")
    options.validate()
    include = [i for i in INCLUDES if i in _included(options)]
    _check_fasta(fasta)
    folder = _output_folder(output_dir)
    checkpoint = fair_esm_file(options.model)
    if checkpoint is None:
        # (the model directory, or a folder of it that it or its run uses: the ID.pt files would go
        # among the model's files, and embed, asked for the work file there, refused it in words
        # esm-extract lost, "error: ; nothing was kept". A fair-esm .pt file's folder is no model
        # directory: fair-esm writes there.)
        from protrans_cli.embed import refuse_inside_model

        refuse_inside_model(output_dir, (options.model,), "OUTPUT_DIR", "output_dir", contents="the .pt files")
    if checkpoint is None:
        layers = _layers_checked(str(options.model), options, include)
    else:  # (converted in PARTIAL, and checked again then: refused here before minutes of converting)
        _checkpoint_checked(checkpoint, options, include)
    with folder_made(folder):  # (removed again where the run fails before any file is in it)
        from protrans_cli.io.files import default_permissions, folder_lock

        _sweep_old_work_folders(folder)
        work = folder / PARTIAL
        # (flock: a SIGKILLed run's lock goes with its process, and its folder is resumed as it is)
        with folder_lock(work, f"is the working folder of another esm-extract run into {output_dir} that is "
                               "running now: wait for it to end, or choose another OUTPUT_DIR"):
            model = str(options.model)
            if checkpoint is not None:
                model, layers = _converted_in(work, checkpoint, options, include)
            _start(work, options, include, layers, checkpoint)
            try:
                with console.said_once():  # (contacts and embed each read the input, and warned of its gaps twice)
                    summary = _extract(fasta, work, folder, options, include, layers, model)
                default_permissions(work / "files")  # (the files of any output under the umask)
                summary.num_replaced = _move_in(work / "files", folder)
            except BaseException as exc:
                _stopped(exc, work, str(output_dir), fasta, include)
                raise
            _emptied(work)  # (folder_lock removes it, empty)
    if summary.truncated:  # (esm-extract cuts them without a word)
        limit = option("--truncation_seq_length", "truncation_seq_length")
        count, one = len(summary.truncated), len(summary.truncated) == 1
        console.warn(f"{console.counted(count, 'protein')} of {summary.num_written:,} {'is' if one else 'are'} longer "
                     f"than {limit} {options.truncation_seq_length}: {'its file holds' if one else 'their files hold'} "
                     f"the first {options.truncation_seq_length:,} residues, as esm-extract's "
                     f"({console.some_named(count, summary.truncated[:console.NAMED])}); a larger {limit} keeps more")
    return summary


# what in PARTIAL is computed work (the rest: settings.json, the copy of stdin, lock files, the
# conversion of a fair-esm file in _MODEL and what it was converted from in _MODEL_RECORD)
_WORK = ("contacts.h5", "contacts.h5.partial", "embeddings.h5", "embeddings.h5.partial", "files")
_MODEL, _MODEL_RECORD = "model", "model.json"


def _settings(options: ExtractOptions, include: list[str], layers: list[int], checkpoint: Path | None = None) -> dict:
    """What a kept run's work was computed with, as settings.json holds it (the settings that change
    the files; --toks_per_batch and --nogpu do not). A fair-esm file's model is the file as the
    user named it, resolved (its conversion in PARTIAL is no model of the user's), and which
    file that is (checkpoint_identity)."""
    from protrans_cli.embed import model_attr

    model = {"model": model_attr(str(options.model))} if checkpoint is None else \
        {"model": str(checkpoint.resolve()), "checkpoint": checkpoint_identity(checkpoint)}
    return {**model, "repr_layers": list(layers), "include": list(include),
            "truncation_seq_length": int(options.truncation_seq_length), "dtype": str(options.dtype)}


_SETTING_NAMES = {"model": ("MODEL_LOCATION", "model"), "checkpoint": ("MODEL_LOCATION's file", "model's file"),
                  "repr_layers": ("--repr_layers", "repr_layers"),
                  "include": ("--include", "include"),
                  "truncation_seq_length": ("--truncation_seq_length", "truncation_seq_length"),
                  "dtype": ("--dtype", "dtype")}


def fair_esm_file(model) -> Path | None:
    """The fair-esm checkpoint `model` names (a `.pt` file: fair-esm's esm-extract's test of its
    MODEL_LOCATION), else None."""
    text = str(model)
    return Path(text) if text.endswith(".pt") and os.path.isfile(text) else None


def checkpoint_identity(checkpoint: Path) -> str:
    """Which fair-esm file a conversion and a run's work come from: its size and modification
    time (and its contact regression's beside it). Not a digest: ESM-2 15B's file is 60 GB, a
    minute and more to read at every run, and a file replaced or rewritten has another mtime
    (embed's and contacts' own resume compare the conversion's weights_fingerprint besides)."""
    def of(path: Path) -> str:
        import datetime

        status = path.stat()
        when = datetime.datetime.fromtimestamp(status.st_mtime_ns // 10**9).isoformat(sep=" ")
        return f"{status.st_size:,} bytes, modified {when}.{status.st_mtime_ns % 10**9:09d}"

    regression = checkpoint.with_name(f"{checkpoint.stem}-contact-regression.pt")
    try:
        return of(checkpoint) + (f"; {regression.name} {of(regression)}" if regression.is_file() else "")
    except OSError as exc:
        raise InputError(f"cannot read the checkpoint: {exc.strerror or exc}", path=str(checkpoint)) from None


def _layers_checked(model: str, options: ExtractOptions, include: list[str]) -> list[int]:
    """esm-extract's layer numbers of --repr_layers for `model`, the model refused where it has
    no contact head for --include contacts (from its config alone: no weights loaded yet)."""
    family, num_layers = _model_shape(model)
    layers = esm_layers((options.repr_layers,) if isinstance(options.repr_layers, int) else options.repr_layers,
                        num_layers, str(options.model))
    if "contacts" in include and family != "esm":
        contacts = option("--include contacts", "include 'contacts'")
        raise ModelError(f"{options.model}: {contacts} reads ESM's contact head, and this is a {family} model "
                         "(mean, per_tok and bos are for any model; contacts for ESM-2 and ESM-1b)")
    return layers


def _checkpoint_checked(checkpoint: Path, options: ExtractOptions, include: list[str]) -> None:
    """--repr_layers and --include contacts checked against the fair-esm file `checkpoint` before
    it is converted (ESM-2 15B's 60 GB take minutes), as _layers_checked and contacts check a model
    directory, with their messages: its layers and its contact head (fair-esm's contact regression
    in it or beside it, MODEL-contact-regression.pt) read from its config and tensors' shapes. A
    file in torch's older format (a pickle, read whole, not mapped) gives its shapes through a read
    of its tensors as fake ones (checkpoint_shape's); where that read fails, the conversion (which
    reads it whole) says why, and the checks follow it."""
    from protrans_cli.models.fair_esm import REGRESSION_SUFFIX, checkpoint_shape, mapped

    try:
        arch, contact_head = checkpoint_shape(checkpoint)
    except InputError:
        if mapped(checkpoint):
            raise
        return  # (the fake read is a shortcut: a file it cannot read is left to the conversion's word)
    esm_layers((options.repr_layers,) if isinstance(options.repr_layers, int) else options.repr_layers,
               arch.layers, str(options.model))
    if "contacts" not in include:
        return
    if not contact_head:
        raise ModelError(f"{options.model}: the model has no contact head (no {checkpoint.stem}{REGRESSION_SUFFIX} "
                         "beside it)")
    from protrans_cli.contacts import refuse_esm1v

    with _in_esm_extract_terms():  # (contacts' advice names models by -m; esm-extract has none)
        refuse_esm1v(str(options.model), checkpoint.name)


def _converted_in(work: Path, checkpoint: Path, options: ExtractOptions, include: list[str]) -> tuple[str, list[int]]:
    """A fair-esm file converted into PARTIAL/model/ (its path does not change from run to run, so
    that embed's and contacts' resume see one model; a kept run's conversion of the same file is
    used again): (the model directory, the layers). A kept run of another file is refused first
    (no conversion made for nothing)."""
    from protrans_cli.models.fair_esm import import_fair_esm

    identity = checkpoint_identity(checkpoint)
    kept = _kept_settings(work, options)
    if kept is not None:
        _refuse_other(work, kept, _settings(options, include, [], checkpoint), ("model", "checkpoint"))
    target = work / _MODEL / checkpoint.stem
    try:
        try:
            recorded = (work / _MODEL_RECORD).read_text(encoding="utf-8")
        except OSError:
            recorded = None
        if recorded == identity and (target / "config.json").is_file():
            console.info(f"esm-extract: the conversion of {checkpoint} that the interrupted run made is used")
        else:
            shutil.rmtree(work / _MODEL, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (work / _MODEL_RECORD).unlink()
            console.info(f"esm-extract: converting {checkpoint} for this run (`protrans import-model {checkpoint} "
                         "-o DIR` converts it once, for MODEL_LOCATION DIR)")
            import_fair_esm(checkpoint, target)
            (work / _MODEL_RECORD).write_text(identity, encoding="utf-8")  # (once whole)
        return str(target), _layers_checked(str(target), options, include)
    except BaseException:
        if kept is None:
            _emptied(work)  # (no work: the folder goes)
        raise


def _kept_settings(work: Path, options: ExtractOptions) -> dict | None:
    """The settings of the interrupted run's work PARTIAL holds (refused without resume), or None
    where it holds none."""
    held = [entry for entry in _WORK if os.path.lexists(work / entry)]
    if held and not options.resume:
        raise UsageError(f"holds the work of an interrupted esm-extract run: {resume_option()} finishes it "
                         "(with the settings it was computed with); remove the folder to start again", path=str(work))
    if not held:
        return None
    try:
        kept = json.loads((work / _SETTINGS).read_text(encoding="utf-8"))
        if not isinstance(kept, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise InputError(f"{_SETTINGS} cannot be read ({getattr(exc, 'strerror', None) or exc}): what its work "
                         "was computed with is unknown; remove the folder to start again", path=str(work)) from None
    return kept


def _refuse_other(work: Path, kept: dict, settings: dict, keys=None) -> None:
    """A kept run's `settings` (those of `keys`) that differ from this run's refused, naming them."""
    from protrans_cli.embed import same_model

    def shown(value):
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    differ = []
    for key, now in settings.items():
        if keys is not None and key not in keys:
            continue
        before = kept.get(key)
        if key == "checkpoint" and differ:
            continue  # (another model: which file each was is no news)
        if not (same_model(str(before), now) if key == "model" else before == now):
            differ.append(f"{option(*_SETTING_NAMES[key])} {shown(before)}, now {shown(now)}")
    if differ:
        raise UsageError(f"holds the work of a run with other settings ({'; '.join(differ)}): "
                         f"{resume_option()} goes on with the settings it was computed with; remove the folder to "
                         "start again with these", path=str(work))


def _start(work: Path, options: ExtractOptions, include: list[str], layers: list[int],
           checkpoint: Path | None = None) -> None:
    """PARTIAL (locked, made if missing) ready for this run: an interrupted run's work there is
    refused without resume, and with it where it was computed with other settings; settings.json
    says this run's."""
    settings = _settings(options, include, layers, checkpoint)
    kept = _kept_settings(work, options)
    if kept is not None:
        _refuse_other(work, kept, settings)
    else:  # (a run killed before it computed anything: its settings, a copy of stdin; not this run's conversion)
        _emptied(work, keep=(_MODEL, _MODEL_RECORD) if checkpoint is not None else ())
    temporary = work / f".{_SETTINGS}.tmp"
    try:
        temporary.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, work / _SETTINGS)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write {_SETTINGS}: {exc.strerror or exc}", path=str(work)) from None


# the working folders of earlier versions, `.esm-extract.<host>.<pid>-XXXX` in OUTPUT_DIR (made by
# io.files.make_temporary, whose sweep at the next run removed a SIGKILLed run's)
_OLD_WORK_PREFIX = ".esm-extract."


def _sweep_old_work_folders(folder: Path) -> None:
    """Remove the working folders that runs of earlier versions killed (SIGKILL, a node lost) left
    in OUTPUT_DIR, as make_temporary swept them: a process of this host that is gone, the folder
    untouched for an hour (a container sharing the host name may be running one)."""
    import re

    from protrans_cli.io.files import STALE_SECONDS, _remove_dead

    _remove_dead(folder, re.escape(_OLD_WORK_PREFIX), "", untouched_for=STALE_SECONDS)


def _emptied(work: Path, keep=()) -> None:
    """PARTIAL emptied but for the entries `keep` (not removed: its lock is held on it;
    folder_lock removes it, empty)."""
    for entry in os.listdir(work):
        if entry in keep:
            continue
        path = work / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def _computed(work: Path, name: str, kinds: tuple) -> int:
    """The proteins of PARTIAL's `name` (its partial file, else the finished one) that are computed."""
    from protrans_cli.io.h5 import h5_file, partial_path

    path = work / name
    path = partial_path(path) if partial_path(path).exists() else path
    if not path.exists():
        return 0
    try:
        with h5_file(path, "r") as handle:
            group = next((handle[kind] for kind in kinds if kind in handle), None)
            return 0 if group is None else sum(1 for _ in _proteins(group))
    except Exception:  # (a file a kill tore: resume mends it, and it is kept for that)
        return -1


def _kept_line(work: Path, fasta, include: list[str]) -> str | None:
    """"N of M proteins computed are kept in PARTIAL" where a stopped run computed any; else None."""
    from protrans_cli.embed import is_stream, scan_input
    from protrans_cli.io.h5 import CONTACTS, PER_PROTEIN, PER_RESIDUE

    counts = {}
    if "contacts" in include:
        counts["contact maps"] = _computed(work, "contacts.h5", (CONTACTS,))
    if {"per_tok", "mean", "bos"}.intersection(include):
        counts["hidden states"] = _computed(work, "embeddings.h5", (PER_RESIDUE, PER_PROTEIN))
    if not any(counts.values()) and not os.path.isdir(work / "files"):
        return None
    try:  # (the input's count: the copy of stdin where the run read one)
        spool = work / ".input.stdin.spool"
        source = spool if str(fasta) == "-" or is_stream(fasta) else fasta
        total = f" of {scan_input(source, str(fasta)).num_records:,}"
    except Exception:
        total = ""
    if -1 in counts.values():
        return f"the proteins computed are kept in {work}"
    if len(counts) == 1:
        return f"{next(iter(counts.values())):,}{total} proteins computed are kept in {work}"
    return " and ".join(f"{what} of {count:,}" for what, count in counts.items()) + f"{total} proteins computed " \
        f"are kept in {work}"


def _stopped(exc: BaseException, work: Path, output_dir: str, fasta, include: list[str]) -> None:
    """A run stopped by `exc`: what it computed stays in PARTIAL, said (a ProtransError's message,
    a KeyboardInterrupt's note, which the command line says); PARTIAL is emptied where it holds
    nothing computed."""
    kept = _kept_line(work, fasta, include)
    if kept is None:
        _emptied(work)
    if isinstance(exc, ProtransError):
        _nothing_kept(exc, work, output_dir, kept)
    elif kept is not None and isinstance(exc, KeyboardInterrupt):
        exc.add_note(f"{kept}; {again_with_resume()}")


def _included(options: ExtractOptions) -> tuple:
    """options.include as a tuple (one name given as a str is one item, not its letters)."""
    return (options.include,) if isinstance(options.include, str) else tuple(options.include)


def esm_layers(repr_layers, num_layers: int, model: str = "the model") -> list[int]:
    """esm-extract's layer numbers of `repr_layers` for a model of `num_layers` blocks: each from
    -(N + 1) to N, a negative one counted from the end (-1 is N), 0 the embedding layer; each
    layer once, in order (as its dicts hold them)."""
    states = num_layers + 1
    for layer in repr_layers:
        if not -states <= layer < states:
            raise UsageError(f"{option(f'--repr_layers {layer}', f'repr_layers {layer}')}: {model} has {num_layers} "
                             f"layers, so its layers run from {-states} to {num_layers} (0 the embedding layer, "
                             f"{num_layers} or -1 the last)")
    return sorted({layer % states for layer in repr_layers})


def _check_fasta(fasta) -> None:
    """The FASTA is there before a folder is made or a model loaded (embed would say so too, later)."""
    from protrans_cli.io.files import unreachable_input

    if str(fasta) == "-":
        return
    if problem := unreachable_input(fasta):
        raise InputError(problem, path=str(fasta))
    if os.path.isdir(fasta):
        raise InputError("is a directory, expected a file", path=str(fasta))


def _output_folder(output_dir) -> Path:
    """OUTPUT_DIR: a folder, or a path where one can be made (esm-extract makes it, parents too)."""
    from protrans_cli.io.files import folder_can_be_made, no_file_here, through_link

    text = str(output_dir)
    if text in ("", "-"):
        raise UsageError("OUTPUT_DIR: esm-extract writes a folder of .pt files: name one")
    folder = through_link(text.rstrip(os.sep) or text)  # (the user's own link to a folder: where it leads)
    if folder.exists() and not folder.is_dir():
        raise UsageError("exists and is not a folder (esm-extract writes a folder of .pt files)", path=text)
    folder_can_be_made(folder)
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise no_file_here(text)
    return folder


def _model_shape(model: str) -> tuple[str, int]:
    """(family, number of blocks) of the model, from its config alone (no weights loaded yet)."""
    from protrans_cli.models import open_config

    with _in_esm_extract_terms():  # (its errors advise giving a model: as MODEL_LOCATION, not -m)
        source = open_config(model)
    return source.family.name, source.family.num_layers(source.config)


def _extract(fasta, work: Path, folder: Path, options: ExtractOptions, include: list[str],
             layers: list[int], model: str) -> ExtractSummary:
    from protrans_cli.embed import _spool_input, is_stream
    from protrans_cli.io.files import display_name

    name = display_name(fasta)
    # stdin or a pipe is read by both computations: copied once (embed and contacts each copy
    # theirs, and the second found it empty)
    source = _spool_input(work / "input", fasta) if str(fasta) == "-" or is_stream(fasta) else fasta
    summary = ExtractSummary(output=folder, layers=layers)
    contacts_file = embeddings_file = None
    failed: dict[str, str] = {}
    wanted = {"per_tok", "mean", "bos"}.intersection(include)
    shared: list = []  # the model contacts loaded, where embed runs it next (loaded once: ESM-2 15B takes minutes)
    if "contacts" in include:
        # first: a model without a trained head is refused before anything is computed
        from protrans_cli.contacts import ContactOptions, predict_contacts

        contacts_file = work / "contacts.h5"
        with _in_esm_extract_terms(model, options.model):
            done = predict_contacts(source, contacts_file, ContactOptions(
                model=model, device=options.device, dtype=options.dtype, max_tokens=options.toks_per_batch,
                max_length=options.truncation_seq_length, long_policy="truncate", storage_dtype="float32",
                threads=options.threads, command_line=options.command_line, resume=options.resume), input_name=name,
                on_load=(lambda loaded: shared.append((loaded, _attention_of(loaded)))) if wanted else None)
        summary.num_records, summary.num_resumed = done.num_records, done.num_resumed
        failed.update(done.failed or {})
    if wanted:
        from protrans_cli.embed import EmbedOptions, embed

        # rows for per_tok, and for a mean beside bos (embed pools one way a run: the mean is
        # taken of the rows); <cls> vectors for bos; the means alone where they are all
        per_residue = "per_tok" in wanted or {"mean", "bos"} <= wanted
        per_protein = "bos" in wanted or not per_residue
        embeddings_file = work / "embeddings.h5"
        embed_options = EmbedOptions(
            model=model, per_residue=per_residue, per_protein=per_protein, layers=tuple(layers),
            pooling="cls" if "bos" in wanted else "mean", device=options.device, dtype=options.dtype,
            max_tokens=options.toks_per_batch, max_length=options.truncation_seq_length, long_policy="truncate",
            threads=options.threads, command_line=options.command_line, resume=options.resume)
        with _in_esm_extract_terms(model, options.model):
            embedder = _embedder_of(*shared.pop(), embed_options) if shared else None
            done = embed(source, embeddings_file, embed_options, embedder=embedder, distributed=False,
                         input_name=name)
        del embedder
        summary.num_records = done.num_records  # (resumed: those both computations had computed)
        summary.num_resumed = min(summary.num_resumed, done.num_resumed) if contacts_file else done.num_resumed
        failed.update(done.failed)
    shutil.rmtree(work / "files", ignore_errors=True)  # (a run stopped while writing them: written again)
    _write_files(work / "files", folder, include, layers, embeddings_file, contacts_file, failed, summary)
    summary.failed = failed
    return summary


def _attention_of(loaded) -> str | None:
    """The attention the model was loaded with (transformers' `_attn_implementation`: sdpa)."""
    from protrans_cli.contacts import _encoder

    return getattr(_encoder(loaded).config, "_attn_implementation", None)


def _embedder_of(loaded, attention: str | None, options):
    """embed's embedder of the model contacts ran, its attention put back to the one it was loaded
    with (the contact head switched it to the eager one, for its attention maps: the same numbers,
    slower, and an (L, L) matrix a head held)."""
    from protrans_cli.contacts import _encoder
    from protrans_cli.embed import build_embedder

    if attention:
        _encoder(loaded).set_attn_implementation(attention)
    return build_embedder(options, loaded=loaded)


def _write_files(files: Path, folder: Path, include: list[str], layers: list[int], embeddings_file, contacts_file,
                 failed: dict[str, str], summary: ExtractSummary) -> None:
    """esm-extract's file of every protein both computations wrote, into the new folder `files`."""
    import torch

    from protrans_cli.export import esm_file_names, save_esm_files
    from protrans_cli.io.h5 import CONTACTS, PER_PROTEIN, PER_RESIDUE, dataset_attrs, escape_key, h5_file, read_array

    with contextlib.ExitStack() as stack:
        groups = {}  # kind -> its HDF5 group
        if embeddings_file is not None:
            handle = stack.enter_context(h5_file(embeddings_file, "r"))
            groups.update({kind: handle[kind] for kind in (PER_RESIDUE, PER_PROTEIN) if kind in handle})
        if contacts_file is not None:
            groups[CONTACTS] = stack.enter_context(h5_file(contacts_file, "r"))[CONTACTS]
        first = next(iter(groups.values()))  # (the writers make their groups on opening: there even if empty)
        order = [ident for ident, _ in _proteins(first) if ident not in failed]
        for kind, group in groups.items():  # (a protein one computation wrote and the other could not)
            held = {ident for ident, _ in _proteins(group)}
            order = [ident for ident in order if ident in held]
        names = esm_file_names(order, folder)

        def entry_of(ident: str) -> dict:
            key = escape_key(ident)
            attrs, _ = dataset_attrs(first, key)
            header = attrs["header"] if "header" in attrs else ident
            entry: dict = {"label": header.decode("utf-8", "replace") if isinstance(header, bytes) else str(header)}
            if "truncated_from" in attrs:
                summary.truncated.append(ident)
            rows = _layered(read_array(groups[PER_RESIDUE], key), 2) if PER_RESIDUE in groups else None
            if "per_tok" in include:  # (n_layers, L, D) -> {layer: (L, D)}
                entry[FIELDS["per_tok"]] = _by_layer(layers, [rows[k] for k in range(len(layers))])
            if "mean" in include:
                if rows is not None:  # (the mean of the rows stored, as esm-extract's of its rows)
                    means = rows.astype(np.float64).mean(axis=1).astype(np.float32)
                else:
                    means = _layered(read_array(groups[PER_PROTEIN], key), 1)
                entry[FIELDS["mean"]] = _by_layer(layers, list(means))
            if "bos" in include:
                entry[FIELDS["bos"]] = _by_layer(layers, list(_layered(read_array(groups[PER_PROTEIN], key), 1)))
            if "contacts" in include:
                entry[FIELDS["contacts"]] = torch.from_numpy(np.ascontiguousarray(read_array(groups[CONTACTS], key),
                                                                                  dtype=np.float32))
            return entry

        files.mkdir()
        save_esm_files(files, order, names, entry_of, shown=folder, source=folder)
        summary.num_written = len(order)


def _proteins(group):
    from protrans_cli.io.h5 import stored_proteins

    return stored_proteins(group, checksums=False)


def _layered(array: np.ndarray, ndim: int) -> np.ndarray:
    """embed's array with the layer axis first ((n_layers, L, D), (n_layers, D); one layer is
    stored without it: `ndim`, the dimensions of one layer's array)."""
    return array[None] if array.ndim == ndim else array


def _by_layer(layers: list[int], arrays) -> dict:
    import torch

    return {layer: torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
            for layer, values in zip(layers, arrays)}


def _move_in(files: Path, folder: Path) -> int:
    """Move every file of `files` into `folder` (the same file system: renames), SIGINT, SIGTERM
    and SIGHUP held meanwhile; the number that replaced a file of the same name."""
    from protrans_cli.io.files import odd_kind, signals_held

    entries = sorted(os.listdir(files))
    for entry in entries:  # (every one before the first moves in: a failed run leaves none of its files)
        target = folder / entry
        if target.is_dir() and not target.is_symlink():
            raise RuntimeFailure("is a folder: the protein's .pt file cannot take its place", path=str(target))
        # (a named pipe, socket or device was replaced as a file of the same name is, deleted; a link is replaced)
        if (what := odd_kind(target, follow_symlinks=False)) is not None:
            raise RuntimeFailure(f"is {what}: the protein's .pt file cannot take its place", path=str(target))
    replaced = 0
    with signals_held():
        for entry in entries:
            target = folder / entry
            replaced += os.path.lexists(target)
            os.replace(files / entry, target)
    return replaced


def _nothing_kept(exc: ProtransError, work: Path, output_dir: str, kept: str | None = None) -> None:
    """A failure of embed or contacts as esm-extract has it: their advice for a full disk or a
    failed write ("what was computed is kept in .../embeddings.h5.partial; run the same command
    with --resume") named a file inside PARTIAL. Named by OUTPUT_DIR, and what is true said: `kept`
    ("N of M proteins computed are kept in PARTIAL"), to go on from with --resume, or nothing kept
    (PARTIAL emptied: no protein had been computed)."""
    inside = str(work)
    if exc.path is not None and str(exc.path).startswith(inside):
        exc.path = output_dir
    advice = any(word in exc.message for word in (*RESUME_WORDS, inside))
    if kept is not None and not advice and "resume" in exc.message:
        return  # (a resume refused, "cannot resume: ...": its own advice)
    if kept is None and not advice:
        return
    clauses = []
    for clause in exc.message.split("; "):
        if any(word in clause for word in (*RESUME_WORDS, inside)):
            break
        clauses.append(clause)
    first = exc.message.split("; ")[0]
    if not clauses and not any(word in first for word in (*RESUME_WORDS, " kept in ")):  # (not advice)
        # (the first part, the problem, named a file inside PARTIAL: said of OUTPUT_DIR, not left
        # out, which left the message empty before "; nothing was kept")
        clauses = [re.sub(re.escape(inside) + r"[^\s:;,)]*", lambda _: output_dir, first)]
    if kept is not None:
        exc.message = "; ".join(clauses + [kept, again_with_resume()])
        return
    remedy = ("raise the limit" if "file-size limit" in exc.message else "free some space" if "no room" in exc.message
              else "remove the cause")
    exc.message = "; ".join(clauses + [f"nothing was kept (no protein had been computed): {remedy} and "
                                       + option("run it again", "call it again")])


@contextlib.contextmanager
def _in_esm_extract_terms(model: str | None = None, given=None):
    """Messages of embed and contacts (warnings, and errors on their way out) that name a setting
    by their flag (`--max-length 2000 is more than the model accepts`) name it by esm-extract's
    (`--truncation_seq_length 2000 ...`); a library call's name settings by keyword, untouched.
    The model `model` run (a fair-esm file's conversion in PARTIAL) is named as given, `given`."""
    names = dict(_FLAGS)
    if model is not None and str(model) != str(given):
        names[str(model)] = str(given)
    with console.naming(names):  # (one block: each flag renamed once, "protrans embed --invalid-policy skip" not again)
        yield

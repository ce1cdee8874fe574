"""Apply a trained head to an embeddings file, and optionally score it against labels.

Output formats:
- per-residue heads (ss3, ss8, ...): FASTA-like, `>id` then one line of states per protein
  (for a head with several outputs, `output=` picks the one written; default the first);
  optional per-residue probabilities as HDF5 `/<output>/<key>` float32 (L, C), dataset
  attribute `id`, file attributes `classes_<output>` (the column order) and `task`.
- per-protein heads (loc, ...): CSV with `id`, then per output its predicted class and one
  probability column per class named `<output>:<class>` (e.g. `loc`, `loc:Nucleus`, `membrane`, `membrane:M`).

An embeddings file whose dimension differs from the head's is refused; one made by another model
than the head was trained on is refused too unless `allow_model_mismatch=True`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from protrans_cli import console
from protrans_cli.errors import (InputError, ModelError, RuntimeFailure, UsageError, at_least, expect_path, first_line, option,
                                 whole_number)
from protrans_cli.heads.data import (Matched, _source_kind, by_chain, chain_items, chains_of, embed_layer, head_data, joined_chains,
                                     match_labels, report_unlabelled, stored_layer_index)
from protrans_cli.heads.labels import mask_column_names, read_labels, some_failed, some_ids
from protrans_cli.heads.tasks import Task, resolve_mask_columns
from protrans_cli.io.files import (atomic_output, default_permissions, display_name, make_temporary, open_input,
                                   output_directory, StagedRename, bare_name, named_delimiter, staged_outputs,
                                   through_link)
from protrans_cli.io.disk import ensure_room
from protrans_cli.io.h5 import (PER_PROTEIN, PER_RESIDUE, EmbeddingsReader, _LowAttrs, _low_attribute_id, abandon,
                                dataset_attrs, dataset_id, escape_key, h5_file, input_prefix_of, is_write_failure,
                                one_protein_twice, open_local, pooling_kind, prefix_words, same_weights, stored_chains,
                                stored_length,
                                three_di_words, truncated_by, truncated_from, unescape_key, write_failure_reason)
from protrans_cli.choices import DEFAULT_LINKER_LENGTH
from protrans_cli.residues import THREE_DI_PREFIX
from protrans_cli.threads import torch_threads


def check_compatible(config: dict, reader: EmbeddingsReader, *, allow_model_mismatch: bool = False) -> None:
    from protrans_cli.heads.model import head_input_kind
    from protrans_cli.heads.tasks import Task

    task = Task.from_json(config["task"])
    source = _source_kind(reader, head_input_kind(config, task), task)
    empty = len(reader._stacked) == 0 if reader.layout == "stacked" else not reader.keys(source)  # (no id list)
    if empty and reader.failed():
        # every protein left out by embed (too long, out of memory): nothing to check, nothing to
        # predict, and the caller says which (it was "holds no per_residue embeddings", exit 1)
        return
    dim = reader.dim(source)
    if dim != config["input_dim"]:
        model = config["embedding"].get("model")
        remedy = (": " + option(f"embed with -m {model}, or give the sequences with --fasta",
                                f"embed with model={model!r}, or give the sequences to predict_sequences")
                  + " (embedded with the head's model)" if model else "")
        raise ModelError(f"embeddings have dimension {dim}, the head was trained on {config['input_dim']}-d "
                         f"embeddings of {model or 'an unknown model'}{remedy}", path=reader.path)
    layer = head_layer(config)  # predict has no --layer: the head's decides, before any work
    # A head that recorded its training file's layers knows its layer: a file's lone other layer is not it.
    stored_layer_index(reader, layer, f"the head was trained on layer {layer}: embed with {embed_layer(layer)}",
                       exact="layers" in config.get("embedding", {}))
    head_model = config.get("embedding", {}).get("model")
    file_model = reader.attrs.get("model")
    from protrans_cli.embed import other_weights, same_model  # (same_model: a directory named two ways, a short
    # name and its hub id; same_weights: its weights at another path)

    if head_model and file_model and not same_model(head_model, file_model) \
            and not same_weights(config.get("embedding", {}), reader.attrs):
        message = f"embeddings come from model {file_model!r}, the head was trained on {head_model!r}"
        mismatch(message, reader.path, allow_model_mismatch)
    elif differ := other_weights(config.get("embedding", {}), reader.attrs):
        # (a local model directory retrained since the head's training embeddings were made)
        message = (f"embeddings come from other weights of the model directory {file_model!r} than the head's "
                   f"training embeddings ({differ}: retrained or replaced since?)")
        mismatch(message, reader.path, allow_model_mismatch)
    # the token embed put before every protein (ProstT5's <AA2fold>): a head fit before embed put
    # one there learned rows made without it
    head_prefix, file_prefix = config.get("embedding", {}).get("input_prefix") or "", input_prefix_of(reader.attrs)
    if head_prefix != file_prefix:
        held = three_di_words(file_prefix, head_prefix)
        remedy = (f"these are embeddings of {held}, the head's of {three_di_words(head_prefix, file_prefix)}: "
                  "embed the sequences the head was fit on" if held
                  else "fit the head again on embeddings of this protrans version")
        message = (f"embeddings were made {prefix_words(file_prefix)}, the head's training embeddings "
                   f"{prefix_words(head_prefix)} (the rows differ: {remedy})")
        mismatch(message, reader.path, allow_model_mismatch)
    # a head fit on per-protein vectors of one pooling (embed --pooling) reads vectors of it
    if head_input_kind(config, task) == PER_PROTEIN:
        head_pooling = pooling_kind(config.get("embedding", {}).get("pooling"))
        file_pooling = pooling_kind(reader.attrs.get("pooling")) if source == PER_PROTEIN else "mean"
        if head_pooling != file_pooling:
            message = (f"per-protein vectors pooled by {file_pooling}, the head was trained on vectors pooled by "
                       f"{head_pooling}: " + option(f"embed with --pooling {head_pooling}, or give the sequences with "
                                                    "--fasta", f"embed with pooling={head_pooling!r}, or give the "
                                                    "sequences to predict_sequences"))
            mismatch(message, reader.path, allow_model_mismatch)


def mismatch(message: str, path, allow: bool) -> None:
    """Embeddings that do not match what they are compared with (another model, input prefix or
    pooling): a ModelError, or with --allow-model-mismatch a warning naming `path`."""
    if not allow:
        raise ModelError(f"{message} ({option('--allow-model-mismatch', 'allow_model_mismatch=True')} overrides)",
                         path=str(path))
    console.warn(f"{path}: {message}")


def head_layer(config: dict) -> int:
    """The model layer a head was trained on, as embed numbers it. Heads written before fit
    recorded it say -1 (fit's default) where the training file held one other layer, which
    fit then read: that layer."""
    layer = int(config.get("layer", -1))
    stored = config.get("embedding", {}).get("layers")
    if layer == -1 and stored is not None and len(np.atleast_1d(stored)) == 1:
        return int(np.atleast_1d(stored)[0])
    return layer


def _all_items(reader: EmbeddingsReader, kind: str,
               chains: dict | None = None) -> tuple[list[Matched], list[str]]:
    """Every protein of the file (`kind`: what the head reads), and the ids of those `embed
    --long-policy truncate` cut short. `chains`, where given, gets each complex's chain lengths
    (embed --chains: its `chains` attribute) by key."""
    source = _source_kind(reader, kind)
    if reader.layout == "stacked":  # (one row a protein, its facts in columns)
        view = reader._stacked
        cuts = view.column("truncated_from")
        items = [Matched(ident, escape_key(ident), int(length), {})
                 for ident, length in zip(view.ids(), view.column("lengths"))]
        return items, [f"{m.id} ({m.length} of {int(cut)})" for m, cut in zip(items, cuts) if cut]
    group = reader._group(source)
    items, truncated = [], []
    for key in reader.keys(source):
        attrs, shape = dataset_attrs(group, key)  # (h5py's low-level calls: group[key].attrs cost 3x as much)
        if shape is None:  # a group among the proteins: none (as EmbeddingsReader.ids has it)
            continue
        ident = dataset_id(key, attrs)  # embed's `id`, bio_embeddings' `original_id`, else the key
        length = stored_length(attrs, shape, per_residue=source == PER_RESIDUE) or 0
        items.append(Matched(str(ident), key, length, {}))
        if (cut := truncated_from(attrs)) is not None:
            truncated.append(f"{ident} ({length} of {cut})")
        if chains is not None and source == PER_RESIDUE and (lengths := stored_chains(attrs)) is not None:
            if sum(lengths) != length or min(lengths, default=0) < 1:
                raise InputError(f"its chains attribute ({', '.join(map(str, lengths))}) does not add up to its "
                                 f"{length} rows (a damaged file)", path=str(reader.path), record=str(ident))
            chains[key] = lengths
    # Two datasets naming one protein (another tool's `original_id`s sharing a first word):
    # predictions were written twice under one id, and --probabilities failed with a traceback.
    first: dict[str, str] = {}
    for item in items:
        other = first.setdefault(item.id, item.key)
        if other != item.key:
            raise one_protein_twice(reader.path, item.id, other, item.key)
    return items, truncated


def embed_for_head(head_dir, fasta, directory, *, model: str | None = None, device: str = "auto",
                   threads: int | None = None, long_policy: str | None = None, max_length: int | None = None,
                   chunk_overlap: int | None = None, invalid_policy: str = "error", chains: str | None = None,
                   linker_length: int | None = None,
                   allow_model_mismatch: bool = False) -> tuple[Path, list[str]]:
    """Embed a FASTA the way the head's training embeddings were made (its recorded model and
    layer, per residue or per protein as the head needs, and long-protein policy): (HDF5 file in
    `directory`, the FASTA's ids in input order). `model` replaces the recorded model (e.g. the
    same weights elsewhere); `long_policy`, `max_length`, `chunk_overlap` the recorded policy
    (a head that records none: error, at the model's own limit, as embed does); `chains`,
    `linker_length`: complexes, as embed's (default: as the head records them, a finetune's
    --chains or a fit head's training embeddings'; else refused)."""
    options, config = head_embed_options(head_dir, model=model, device=device, threads=threads,
                                         long_policy=long_policy, max_length=max_length,
                                         chunk_overlap=chunk_overlap, invalid_policy=invalid_policy,
                                         chains=chains, linker_length=linker_length,
                                         allow_model_mismatch=allow_model_mismatch)
    readable, ids = fasta_ids(fasta, directory)
    embeddings = embed_fasta(readable, ids, directory, options, fasta,
                             f"for the {config.get('task', {}).get('name', config['kind'])} head",
                             recorded_in=None if model is not None else head_dir)
    if model is not None:
        _of_the_heads_width(embeddings, config, model)
    return embeddings, ids


def _of_the_heads_width(embeddings, config: dict, model: str) -> None:
    """`predict --fasta -m MODEL`: embeddings of another width than the head's are refused as the
    user's -m (the check of an embeddings file advised "embed with -m HEAD_MODEL, or give the
    sequences with --fasta", which were given), as predict_sequences refuses its model=."""
    from protrans_cli.heads.model import head_input_kind
    from protrans_cli.heads.tasks import Task

    task = Task.from_json(config["task"])
    with EmbeddingsReader(embeddings) as reader:
        source = _source_kind(reader, head_input_kind(config, task), task)
        if (len(reader._stacked) == 0 if reader.layout == "stacked" else not reader.keys(source)):
            return  # (every protein left out: check_compatible's case)
        width = reader.dim(source)
    if width != int(config["input_dim"]):
        recorded = config.get("embedding", {}).get("model") or "an unknown model"
        given = option(f"-m {model}", f"model={model!r}")
        raise UsageError(f"{given} gives {width}-d embeddings; the head was fit on {config['input_dim']}-d embeddings "
                         f"of {recorded}: give {option('-m', 'model=')} a copy of that model, or leave "
                         f"{option('-m', 'model')} out (--fasta embeds with the head's own)")


def fasta_ids(fasta, directory) -> tuple[Path | str, list[str]]:
    """(a path to read the FASTA from, its ids in input order): stdin, a FIFO or <(zcat ...)
    copied into `directory` first, as it is read twice (ids, then embed)."""
    import shutil

    from protrans_cli.embed import is_stream
    from protrans_cli.io.fasta import parse_fasta

    shown = display_name(fasta)
    if str(fasta) == "-" or is_stream(fasta):
        # (a pipe was read to its end by the first pass: "no FASTA records"); messages still
        # name the input
        spooled = Path(directory) / "input.fasta"
        try:
            with open_input(fasta, shown) as stream, open(spooled, "wb") as fh:
                shutil.copyfileobj(stream, fh, 1 << 20)
        except OSError as exc:
            from protrans_cli.io.files import disk_full

            if (reason := disk_full(exc)) is None:
                raise
            # (a write's error names no file: "error: No space left on device")
            raise RuntimeFailure(f"the copy of {shown} (a temporary file in this folder, removed): cannot write: "
                                 f"{reason}", path=str(Path(directory).parent)) from None
        fasta = spooled
    with open_input(fasta, shown) as stream:
        # (a header with a NUL byte is embed's to refuse, or skip under --invalid-policy skip: read
        # here, it failed predict and knn --fasta whatever the policy)
        return fasta, [record.id for record in parse_fasta(stream, shown, nul_headers=True)]


def embed_fasta(readable, ids: list[str], directory, options, fasta, purpose: str, recorded_in=None) -> Path:
    """Embed the FASTA `fasta` (read from `readable`, of fasta_ids) with `options` into
    `directory`/embeddings.h5; `purpose` ends the message saying so ("for the loc head").
    `recorded_in`: the head or file whose record named the model (not the user's -m)."""
    from protrans_cli.embed import embed

    output = Path(directory) / "embeddings.h5"
    if ids:  # (none: embed says so, in one line, without "embedding 0 proteins" before it)
        console.info(f"embedding {console.counted(len(ids), 'protein')} with {options.model} {purpose}")
    try:
        embed(readable, output, options, input_name=display_name(fasta))
    except RuntimeFailure as exc:
        if exc.path is None or Path(exc.path).parent != Path(directory):
            raise
        # A full disk named the hidden temporary file (removed as the command ends) and said that
        # what was computed was kept there for --resume, which predict and knn do not take.
        problem = exc.message.split("; ")[0]
        remedy = "raise the limit" if "ulimit -f" in problem else "free some space"
        raise RuntimeFailure(f"the embeddings of {display_name(fasta)} (a temporary file in this folder, removed): "
                             f"{problem}; nothing is kept: {remedy} and "
                             + option("run the command again", "call it again"),
                             path=str(Path(directory).parent)) from None
    except ModelError as exc:
        from protrans_cli.models.checkpoints import CHECKPOINTS

        name = str(options.model)
        catalogued = name in CHECKPOINTS or any(c.hub_id == name for c in CHECKPOINTS.values())
        if (recorded_in is None or not exc.message.startswith("cannot load model") or os.path.isabs(name)
                or catalogued):  # (a catalogued model, prot_bert or its hub id, names no directory)
            raise
        # Versions before 2026-11-29 recorded a model directory as -m gave it, relative to the
        # folder embed ran in: from another folder it was looked for on the hub ("hf download
        # run_full"), the record's origin unsaid.
        raise ModelError(f"{recorded_in} records the model as {name!r}, not found from here: a model directory "
                         "that protrans recorded before 2026-11-29 is named relative to the folder embed ran in; "
                         f"run from that folder, or give {option('-m DIR', 'model=DIR')} ({exc.message})",
                         path=exc.path) from None
    return output


def head_embed_options(head_dir, *, model: str | None = None, device: str = "auto", threads: int | None = None,
                       long_policy: str | None = None, max_length: int | None = None,
                       chunk_overlap: int | None = None, invalid_policy: str = "error", chains: str | None = None,
                       linker_length: int | None = None, allow_model_mismatch: bool = False):
    """(EmbedOptions, the head's config): how to embed proteins the way the head's training
    embeddings were made (embed_for_head; heads.arrays.predict_sequences)."""
    from protrans_cli.heads.model import CONFIG, head_input_kind

    head_dir = Path(head_dir)
    try:
        config = json.loads((head_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"not a readable head directory ({type(exc).__name__})", path=str(head_dir)) from None
    try:
        kind = head_input_kind(config)  # (a Light Attention head of a per-protein task: per residue)
    except (KeyError, ValueError, TypeError, IndexError) as exc:  # (said as load_head says it)
        raise ModelError(f"head config is incomplete or unreadable ({first_line(exc)})",
                         path=str(head_dir / CONFIG)) from None
    name = model or config.get("embedding", {}).get("model")
    word = option("--model", "model=")  # (predict_sequences takes model=)
    if not name:
        raise UsageError(f"{head_dir} does not record which model made its embeddings: give {word}")
    from protrans_cli.esm_import import SOURCE as ESM_EXTRACT  # (the model import-esm records when not told it)

    if model is None and name == ESM_EXTRACT:
        # (import-esm without -m records the tool, not the model: it was loaded as a model named
        # "esm-extract", a hub download error, once the FASTA had been read)
        unnamed = option("import-esm -m", "import_esm's model=")
        raise UsageError(f"{head_dir} was fit on embeddings imported from esm-extract without naming the model "
                         f"({unnamed}): give {word} (the ESM model that made them, e.g. esm2_t33_650M_UR50D)")
    if model is None:
        name = finetuned_model(head_dir, config, name)
    options = recorded_embed_options(config.get("embedding", {}), "the head's training embeddings", model=name,
                                     layer=head_layer(config), per_residue=kind == PER_RESIDUE, device=device,
                                     threads=threads, long_policy=long_policy, max_length=max_length,
                                     chunk_overlap=chunk_overlap, invalid_policy=invalid_policy, chains=chains,
                                     linker_length=linker_length, same_model=model is None,
                                     allow_model_mismatch=allow_model_mismatch)
    return options, config


def finetuned_model(head_dir, config: dict, name: str) -> str:
    """The model a head of `protrans finetune` embeds with: the OUT/model it records (an absolute
    path), or, where that is gone (OUT moved or copied elsewhere), the model beside the head."""
    from protrans_cli.heads.model import moved_finetune_model

    if not config.get("embedding", {}).get("finetuned_from") or Path(name).exists():
        return name
    beside = moved_finetune_model(head_dir, config)
    if beside is not None:
        console.info(f"{name} (the fine-tuned model the head records) is gone: using {beside}, the one beside "
                     "the head")
        return str(beside)
    raise UsageError(f"{head_dir}: the fine-tuned model the head records, {name}, is gone (was the finetune "
                     f"folder moved without its model/?): give {option('--model', 'model=')} with its new place")


def check_fasta_values(max_length=None, chunk_overlap=None, threads=None) -> None:
    """The values of --fasta's embedding options (predict's and knn's) and of -j, as embed refuses
    them: before the head or the reference is read. `predict HEAD --fasta x.fa --max-length -1`
    with a mistyped HEAD said "no such file" (exit 1) and, once that was put right, refused the
    option; a negative --chunk-overlap under another --long-policy was warned of as ignored."""
    from protrans_cli.threads import check_threads

    # (in embed's words; other types are its to refuse: EmbedOptions.validate, after the recorded settings)
    if whole_number(max_length):
        at_least(max_length, 1, "--max-length", keyword="max_length")
    if whole_number(chunk_overlap):
        at_least(chunk_overlap, 0, "--chunk-overlap", keyword="chunk_overlap")
    if threads is not None:
        check_threads(threads)


def recorded_embed_options(recorded: dict, source: str, *, model: str, layer: int, per_residue: bool,
                           device: str = "auto", threads: int | None = None, long_policy: str | None = None,
                           max_length: int | None = None, chunk_overlap: int | None = None,
                           invalid_policy: str = "error", chains: str | None = None,
                           linker_length: int | None = None, same_model: bool = False,
                           allow_model_mismatch: bool = False):
    """EmbedOptions that embed proteins as the embeddings whose settings `recorded` holds (a
    head's config "embedding", an embeddings file's attributes) were made: their long-protein
    policy, length and overlap unless given, and their 3Di prefix. `source`: what messages call
    those embeddings ("the head's training embeddings"). `same_model` (`model` is the recorded
    one, not a caller's): the hub commit (else revision) the embeddings were made from, so that a
    hub model updated since is not used in its place, and a local directory whose weights differ
    from the recorded `weights_fingerprint` (retrained since) refused unless `allow_model_mismatch`
    (before any protein is embedded). `chains`, `linker_length`: complexes, as embed's; None: as
    `recorded` reads them (a finetune's head records its --chains and --linker-length, a fit head
    its training embeddings': the head learned from complexes read so), else refused. Validated."""
    from protrans_cli.embed import EmbedOptions

    if chains is None and recorded.get("chains") not in (None, "error"):
        chains = str(recorded["chains"])
        if linker_length is None and recorded.get("linker_length") is not None:
            linker_length = int(recorded["linker_length"])
        console.info(f"complexes: --chains {chains}"
                     + (f" --linker-length {DEFAULT_LINKER_LENGTH if linker_length is None else linker_length}"
                        if chains == "linker" else "") + f", as in {source}")
    chains = chains or "error"
    linker_length = DEFAULT_LINKER_LENGTH if linker_length is None else linker_length

    # A proteome with one protein beyond the model's limit failed, and predict had no option to
    # say what to do with it: the recorded policy, at its length, unless replaced.
    from_record = long_policy is None and (recorded.get("long_policy") or "error") != "error"
    if from_record:
        long_policy = str(recorded["long_policy"])
    if long_policy not in (None, "error") and max_length is None and int(recorded.get("max_length") or 0) > 0:
        max_length = int(recorded["max_length"])
    if long_policy == "chunk" and chunk_overlap is None and recorded.get("chunk_overlap") is not None:
        chunk_overlap = int(recorded["chunk_overlap"])
    if chunk_overlap is not None and long_policy != "chunk":
        # (said here, where it is known to be given: handed on, embed's own check said nothing of
        # the value it takes as its default, `--fasta --chunk-overlap 64 --long-policy skip`)
        console.warn(f"--chunk-overlap {chunk_overlap} ignored: it sets the windows of --long-policy chunk, and "
                     f"this run's policy is {long_policy or 'error'}")
        chunk_overlap = None
    if from_record:
        limit = f"{max_length} residues" if max_length else "the model's limit"
        console.info(f"proteins over {limit}: --long-policy {long_policy}, as in {source}")
    given = dict(long_policy=long_policy, max_length=max_length, chunk_overlap=chunk_overlap)
    long = {k: v for k, v in given.items() if v is not None}
    # embeddings of 3Di strings (embed --3di) are compared with embeddings of 3Di strings
    three_di = recorded.get("input_prefix") == THREE_DI_PREFIX
    revision = _recorded_revision(model, recorded, source) if same_model else None
    if same_model and recorded.get("weights_fingerprint") and not os.path.exists(model):
        # (a local model directory, as the weights_fingerprint says, moved or renamed since: it was
        # "MODEL: no such model directory", once the FASTA had been read, without the option that
        # names its new place; the same weights there are the same model)
        raise UsageError(f"{model}, the model directory {source} were made with, is not there (moved or renamed?): "
                         f"give {option('--model', 'model=')} with its new place")
    if same_model:
        _check_recorded_weights(model, recorded, source, allow_model_mismatch)
    # vectors of a cls token (embed --pooling cls) are compared with vectors of a cls token
    pooling = pooling_kind(recorded.get("pooling")) if not per_residue else "mean"
    options = EmbedOptions(model=model, revision=revision, per_residue=per_residue, per_protein=not per_residue,
                           pooling=pooling, layers=(layer,), device=device, threads=threads,
                           invalid_policy=invalid_policy, three_di=three_di, chains=chains,
                           linker_length=linker_length, **long)
    # (before the FASTA is read: `--max-length 0` or `--device gpu` was refused only once a whole
    # proteome had been read, or spooled from stdin)
    options.validate()
    return options


def _check_recorded_weights(model: str, recorded: dict, source: str, allow: bool) -> None:
    """A local model directory whose weights are not those `recorded` (its weights_fingerprint)
    was made from: refused before a FASTA is embedded with it, not once it has been (allowed: the
    check of the embeddings made warns, once)."""
    if allow or not recorded.get("weights_fingerprint"):
        return
    from protrans_cli.embed import other_weights
    from protrans_cli.errors import ProtransError
    from protrans_cli.models import resolve_model, weights_fingerprint

    try:
        target, _, is_dir = resolve_model(model)
    except ProtransError:  # (loading it says why)
        return
    if is_dir and (differ := other_weights(recorded, weights_fingerprint(target))):
        mismatch(f"the model directory {model} holds other weights than {source} were made with ({differ}: "
                 "retrained or replaced since?)", model, False)


def _recorded_revision(model: str, recorded: dict, source: str) -> str | None:
    """The hub commit (else revision) `recorded` names, to load `model` at. None for a model that
    is a local directory here (a directory has no revisions: loading warned of a `--revision` no
    one gave), and, offline, where the local Hugging Face cache lacks that commit but holds the
    model at another (any commit of the repository, a README's too, moves `main`): that one, with
    a warning (the command worked offline before the commit was passed, and failed "not in the
    local Hugging Face cache" with the model in it)."""
    wanted = [str(v) for v in dict.fromkeys((recorded.get("commit"), recorded.get("revision"))) if v]
    if not wanted:
        return None
    from protrans_cli.errors import ProtransError
    from protrans_cli.models import _offline, hub_reachable, resolve_model

    try:
        target, _, is_dir = resolve_model(model)
    except ProtransError:  # (loading it says why)
        return wanted[0]
    if is_dir:
        return None
    if not (_offline() or not hub_reachable()):
        return wanted[0]
    from huggingface_hub import try_to_load_from_cache

    def cached(revision):
        try:
            return try_to_load_from_cache(target, "config.json", revision=revision)
        except Exception:  # noqa: BLE001 - (a malformed id: loading it says so)
            return None

    for revision in wanted:
        if isinstance(cached(revision), str):
            return revision
    path = cached(None)
    if not isinstance(path, str):
        return wanted[0]  # (not cached at all: loading says so, naming the revision to download)
    from transformers.utils.hub import extract_commit_hash

    other = extract_commit_hash(path, None) or "main"
    what = "commit" if recorded.get("commit") else "revision"
    console.warn(f"{model}: {source} were made from its {what} {wanted[0]}, which the local Hugging Face cache "
                 f"lacks (offline): using the cached {other} (the same weights unless the model changed since)")
    return None


def _refuse_outputs_over_inputs(head_dir, embeddings, out, probabilities=None, metrics_dir=None) -> None:
    """The checks `protrans predict` makes of its outputs, made for a Python caller too:
    `predict(head, "q.h5", "q.h5")` replaced the embeddings it had just read with the CSV, an
    output inside the head directory could replace its files (`metrics_dir=head`: a set named
    `config` wrote `config.json`), and `out` and `probabilities` naming one file kept only one."""
    from protrans_cli.io.files import input_named_by, same_file

    for target in (out, probabilities):
        if input_named_by(target, (embeddings,)):
            raise UsageError(f"{target} is also an input: writing it would replace it (choose another name)")
        if input_named_by(target, (), directories=(head_dir,)):
            raise UsageError(f"{target} is inside the head directory {head_dir}: writing it could replace the head's "
                             "files (choose another name)")
    if out is not None and probabilities is not None and str(out) != "-" and same_file(out, probabilities):
        raise UsageError(f"out and probabilities both name {out}: one would replace the other")
    if metrics_dir is not None and input_named_by(metrics_dir, (), directories=(head_dir,)):
        raise UsageError(f"metrics_dir {metrics_dir} is inside the head directory {head_dir}: its files could replace "
                         "the head's (choose another directory)")


@torch_threads()  # puts the caller's torch thread count back
def predict(head_dir, embeddings, out, *, probabilities=None, output: str | None = None,
            max_residues: int = 8192, allow_model_mismatch: bool = False, threads: int | None = None,
            device: str = "auto", order: list[str] | None = None, labelled: list[Matched] | None = None,
            staged: list | None = None) -> dict:
    """Write predictions for every protein in `embeddings` to `out`; returns {"proteins": n}.
    `out` and `probabilities` are renamed together once both are complete (Ctrl-C, SIGTERM and
    SIGHUP wait for the renames); with `staged` (a list) they are written out but not renamed: their
    handles are appended, for the caller to rename with its other outputs (io.files.staged_outputs)
    or abort.
    `order`: ids in the order to write them (e.g. the FASTA's); others follow in file order.
    `labelled`: the matched items of `scored_labels` (`predict --labels`): what scoring needs of
    their predictions (`kept_for_scoring`, in their order) is returned too, as "predicted", for
    `evaluate_head` to score without reading the embeddings and running the head a second time."""
    import torch

    from protrans_cli.heads.fit import head_device
    from protrans_cli.heads.model import head_input_kind, load_head
    from protrans_cli.threads import resolve_threads

    _check_predict_call(head_dir, embeddings, out, probabilities, order, max_residues)
    ensemble, task, config = load_head(head_dir)
    reads = head_input_kind(config, task)  # what the head reads; task.kind is what it writes
    torch.set_num_threads(resolve_threads(threads, small_work=reads != PER_RESIDUE))
    ensemble.to(head_device(device))
    check_head_output(task, output)
    # (before the embeddings are read: a wrong call refused after minutes of reading a large file)
    _refuse_probabilities_of(task, probabilities)
    source = _read_embeddings(embeddings, config, task, reads, order, allow_model_mismatch)
    _warn_unpredicted(embeddings, source)
    if order is not None and not source.streamed:
        rank = {ident: i for i, ident in enumerate(order)}
        source.items.sort(key=lambda m: rank.get(m.id, len(rank)))  # stable: unknown ids keep file order
    layer = head_layer(config)
    _warn_extension(out, task.kind == PER_RESIDUE)
    rows = _Rows.of(task, output, out, labelled, source.chains)
    # Written out first, then renamed together: a Ctrl-C between the two renames (or, with
    # --labels --metrics, while the metrics were written) left new predictions beside older files.
    with staged_outputs(staged) as staged:
        with contextlib.ExitStack() as stack:
            stream = stack.enter_context(atomic_output(out, follow_link=True, staged=staged))
            writer = (stack.enter_context(_ProbabilityWriter(probabilities, task, staged=staged))
                      if probabilities is not None else None)
            rows.write_header(stream)
            parts = _parts(stack, embeddings, source, task, reads, layer)
            _predict_parts(parts, ensemble, task, max_residues, source, rows, stream, writer)
            if source.visited:
                _warn_truncated(embeddings, source)
    count = source.count
    return {"proteins": count} if rows.predicted is None else {"proteins": count, "predicted": rows.predicted}


def _check_predict_call(head_dir, embeddings, out, probabilities, order, max_residues) -> None:
    _check_max_residues(max_residues)
    for name, value in (("head_dir", head_dir), ("embeddings", embeddings), ("out", out)):
        # (a list of files was "['x.h5']: no such file", an InputError for a wrong call)
        expect_path(value, name, " (one file or directory)")
    if isinstance(order, (str, bytes)):  # (one id, or a FASTA's path: read letter by letter, matching nothing)
        raise UsageError(f"order is a list of ids (e.g. [r.id for r in read_fasta(path)]), got {order!r:.60}")
    _refuse_outputs_over_inputs(head_dir, embeddings, out, probabilities)


def _refuse_probabilities_of(task, probabilities) -> None:
    if probabilities is not None and task.kind != PER_RESIDUE:
        raise UsageError(f"{option('--probabilities', 'probabilities')} is for per-residue heads; a per-protein "
                         "head's CSV holds its class probabilities already"
                         + (" (a value head has none: the CSV holds its values)" if any(o.is_value for o in task.outputs)
                            else ""))


@dataclasses.dataclass
class _ToPredict:
    """What predict learns of the embeddings file before it predicts: how its proteins are read
    (`streamed`: a stacked file's slices of rows; `visited`: a grouped file's datasets in file
    order; else `items`, listed first) and which get no prediction, or a partial one."""

    streamed: bool = False
    visited: bool = False
    count: int = 0  # (`visited`: counted as the slices are read)
    truncated: list[str] = dataclasses.field(default_factory=list)  # (`visited`: found as the slices are read)
    items: list[Matched] | None = None
    grouped: tuple | None = None  # (`visited`: the keys, layer index, whether layers are recorded, the width)
    # A complex's chain lengths by key (embed --chains): a per-residue head reads each chain as a
    # protein of its own (a CNN slid across a chain break, mixing the two chains' residues); a
    # per-protein head (Light Attention too) reads the complex whole
    chains: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    failed: dict = dataclasses.field(default_factory=dict)
    subgroups: list = dataclasses.field(default_factory=list)
    cut_by: str | None = None


def _read_embeddings(embeddings, config: dict, task, reads: str, order, allow_model_mismatch: bool) -> _ToPredict:
    """Check the embeddings file against the head, and find how its proteins are to be read."""
    source = _ToPredict()
    with EmbeddingsReader(embeddings) as reader:
        check_compatible(config, reader, allow_model_mismatch=allow_model_mismatch)
        # A stacked file without an order to follow is read a slice of rows at a time, its
        # proteins listed slice by slice (a list of them all took about 1 KB a protein, and
        # each slice looked its rows up in a dictionary of every id: 50 M proteins, hours).
        source.streamed = reader.layout == "stacked" and order is None
        # A grouped file's per-protein vectors for an FNN head, in file order: each dataset opened
        # once, for its attributes and its row together, a slice at a time (listing every protein
        # first, then opening each again for its row, took twice the HDF5 calls: 100,000 proteins 223 s)
        source.visited = (not source.streamed and order is None and reads == PER_PROTEIN
                          and _source_kind(reader, reads) == PER_PROTEIN)
        if source.streamed:
            _source_kind(reader, reads, task)  # (a per-residue head: refused, naming --layout grouped)
            reader._stacked.check_unique()  # (two rows of one id: both were predicted under it)
            source.count, source.truncated = len(reader._stacked), _stacked_truncated(reader._stacked)
        elif source.visited:  # (counted, and its truncated proteins found, as the slices are read)
            # (the layer and width looked up once: reader.dim opens a dataset; a file whose every
            # protein embed left out has none, and an empty CSV, as check_compatible lets it through:
            # it was "holds no per_protein embeddings", exit 1)
            keys = reader.keys(PER_PROTEIN)
            source.grouped = (keys, stored_layer_index(reader, head_layer(config)), "layers" in reader.attrs,
                              reader.dim(PER_PROTEIN) if keys else 0)
        else:
            source.items, source.truncated = _all_items(reader, reads,
                                                        source.chains if task.kind == PER_RESIDUE else None)
            source.count = len(source.items)
        source.failed = reader.failed()
        source.subgroups = reader.subgroups
        source.cut_by = truncated_by(reader.attrs)
    return source


def _warn_unpredicted(embeddings, source: _ToPredict) -> None:
    """What gets no prediction, or one of part of a protein (said once the slices are read where
    they find it)."""
    if source.subgroups:  # datasets nested in groups (ids with '/' written as they were): no prediction either
        console.warn(f"{embeddings}: {len(source.subgroups)} group(s) at the top of this flat file are not read, "
                     f"and the datasets in them get no prediction: {some_ids(sorted(source.subgroups))}")
    if not source.visited:  # (else once the slices are read: only then are they known)
        _warn_truncated(embeddings, source)
    if source.failed:  # proteins embed could not embed (too long, out of memory): no prediction either
        # with why, as embed says it (under --fasta the file is a temporary one, removed as the
        # command ends: the ids alone left the reasons nowhere to read, and its 'failed' attribute
        # is named only where the file is the user's)
        where = "" if str(embeddings) in console.state.names else " (the file's 'failed' attribute)"
        console.warn(f"{embeddings}: {len(source.failed)} protein(s) have no embedding{where} and get no prediction: "
                     f"{some_failed(sorted(source.failed.items()))}")


def _warn_truncated(embeddings, source: _ToPredict) -> None:
    """A prediction of the first residues only, or from their mean: never silent."""
    if source.truncated:
        console.warn(f"{embeddings}: {len(source.truncated)} protein(s) were truncated by {source.cut_by}; their "
                     f"predictions are of the residues kept only: {some_ids(source.truncated)}")


@dataclasses.dataclass
class _Rows:
    """How predictions are written to `out` (a per-residue head: a FASTA-like record of states per
    protein; a per-protein head: a CSV or TSV row), and the labelled proteins' kept for scoring."""

    task: Task
    chosen: str  # the output whose states a per-residue head writes
    table: np.ndarray  # (C,) uint8: a class index's letter
    delimiter: str
    chains: dict[str, tuple[int, ...]]
    wanted: dict[str, list[int]]  # key -> positions in `labelled` (two records may match one protein)
    predicted: dict[str, list] | None  # output -> what scoring takes, by position in `labelled`

    @classmethod
    def of(cls, task, output: str | None, out, labelled: list[Matched] | None, chains: dict) -> "_Rows":
        # a table named .tsv/.tab is tab-separated (it was CSV, which tools that go by the name misread)
        delimiter = "\t" if named_delimiter(out) == "\t" else ","
        chosen = output or task.output_names[0]
        classes = next(o.classes for o in task.outputs if o.name == chosen)
        table = np.frombuffer("".join(classes).encode(), dtype=np.uint8)
        wanted: dict[str, list[int]] = {}
        for i, item in enumerate(labelled or ()):
            wanted.setdefault(item.key, []).append(i)
        predicted = {o.name: [None] * len(labelled) for o in task.outputs} if labelled is not None else None
        return cls(task, chosen, table, delimiter, chains, wanted, predicted)

    def write_header(self, stream) -> None:
        if self.task.kind != PER_RESIDUE:
            header = ["id"]
            for o in self.task.outputs:
                header += [o.name] + [f"{o.name}:{c}" for c in o.classes]  # a value output: its column only
            stream.write(_csv_line(header, self.delimiter))

    def keep_for_scoring(self, part: list[Matched], probs: dict) -> None:
        """The labelled proteins' classes (values), as scoring takes them."""
        from protrans_cli.heads.fit import kept_for_scoring

        kept = kept_for_scoring(self.task, probs)
        for j, item in enumerate(part):
            for i in self.wanted.get(item.key, ()):
                for name in self.predicted:
                    self.predicted[name][i] = kept[name][j]

    def write(self, stream, part: list[Matched], probs: dict) -> None:
        if self.task.kind == PER_RESIDUE:
            # (the id escaped, `\n` `\x1b`: an id from an embeddings file, unlike a FASTA's, may
            # hold a line break, which wrote a forged record: `a\n>X\nCCC` gave proteins a and X)
            # (a complex's states with a ':' between its chains, as its record has them)
            stream.write(b"".join(b">" + console.printable(item.id).encode() + b"\n"
                                  + chain_breaks(self.table[p.argmax(-1)].tobytes(), self.chains.get(item.key))
                                  + b"\n" for item, p in zip(part, probs[self.chosen])))
        else:
            for i, item in enumerate(part):
                row = [item.id]
                for o in self.task.outputs:
                    p = probs[o.name][i]
                    row += ([f"{p[0]:.6g}"] if o.is_value
                            else [o.classes[int(p.argmax())]] + [f"{v:.6g}" for v in p])
                stream.write(_csv_line(row, self.delimiter))


def _parts(stack: contextlib.ExitStack, embeddings, source: _ToPredict, task, reads: str, layer: int):
    """The proteins a slice at a time, each with its embeddings: memory stays bounded (embeddings
    read and probabilities held) whatever the size of the file."""
    if source.streamed:
        return ((part, head_data(embeddings, part, task, reads, layer=layer, rows=rows))
                for part, rows in _stacked_slices(embeddings, source.count, CHUNK_PROTEINS))
    if source.visited:
        # (closed with the outputs: the reader it holds is let go on an error too)
        return stack.enter_context(contextlib.closing(
            _grouped_slices(embeddings, *source.grouped, CHUNK_PROTEINS, source.truncated)))
    return ((part, head_data(embeddings, chain_items(part, source.chains), task, reads, layer=layer))
            for part in _slices(source.items, CHUNK_RESIDUES if reads == PER_RESIDUE else CHUNK_PROTEINS,
                                reads == PER_RESIDUE))


def _predict_parts(parts, ensemble, task, max_residues: int, source: _ToPredict, rows: _Rows, stream,
                   writer: _ProbabilityWriter | None) -> None:
    """Run the head on each slice and write its predictions as they come."""
    from protrans_cli.heads.fit import predict_data

    for part, data in parts:
        source.count += len(part) if source.visited else 0
        probs = joined_chains(predict_data(ensemble, task, data, max_residues=max_residues), part, source.chains)
        if rows.predicted is not None:
            rows.keep_for_scoring(part, probs)
        rows.write(stream, part, probs)
        if writer is not None:  # (a per-residue head's: --probabilities is refused for the others)
            writer.add(part, probs, source.chains)
        # (let go before the next slice is read: the names held this slice's embeddings, up to
        # --cache-gb of them, and its probabilities while the next slice loaded, so two slices
        # were in memory at once: peak RSS 780 MB for 5.5 M one-hot residues, 627 MB for 2.8 M)
        data = probs = None


def chain_breaks(states: bytes, lengths) -> bytes:
    """A complex's per-residue states with a ':' between its chains (`lengths`; None: one chain)."""
    return b":".join(by_chain(states, lengths))


CHUNK_RESIDUES = 2_000_000  # heads reading per-residue rows: residues at a time (< 100 MB of ss3+ss8 probabilities)
CHUNK_PROTEINS = 50_000     # FNN heads: proteins at a time (200 MB of 1024-d embeddings)


def _stacked_truncated(view) -> list[str]:
    """"id (kept of full)" of the proteins of a stacked file that embed truncated (its columns)."""
    cuts = view.column("truncated_from")
    where = np.flatnonzero(cuts)
    if not len(where):
        return []
    ids, lengths = view._read("ids", where), view._read("lengths", where)
    return [f"{ident} ({int(length)} of {int(cut)})" for ident, length, cut in zip(ids, lengths, cuts[where])]


def _stacked_slices(path, count: int, size: int):
    """(items, their rows) of a stacked file, `size` rows at a time in row order: only a slice's
    ids are held (a whole list of them grew by about 1 KB a protein)."""
    for start in range(0, count, size):
        end = min(count, start + size)
        with EmbeddingsReader(path) as reader:
            view = reader._stacked
            ids, lengths = view._read("ids", np.s_[start:end]), view._read("lengths", np.s_[start:end])
        yield ([Matched(str(ident), escape_key(str(ident)), int(length), {}) for ident, length in zip(ids, lengths)],
               np.arange(start, end))


def _grouped_slices(path, keys: list[str], index: int, recorded: bool, dim: int, size: int, truncated: list[str]):
    """(items, their ProteinData) of the per-protein datasets `keys` of a grouped (or flat) file,
    `size` at a time in their order, each dataset opened once for its attributes and its row
    (`_read_grouped`); `index`: the stored layer read (`stored_layer_index`), `recorded`: the file
    records its layers, `dim`: its width, as `ProteinData` takes them. The proteins `embed
    --long-policy truncate` cut short are added to `truncated`, as `_all_items` lists them; two
    datasets naming one protein are refused, as there."""
    first: dict[str, str] = {}
    # One reader for every slice: opening one lists the root of a flat file (and, in another tool's, looks up
    # what each member is), so a reader a slice made predict's cost grow as the square of its proteins
    with EmbeddingsReader(path) as reader:
        for start in range(0, len(keys), size):
            # (made by a function of its own: this frame holds no slice's rows while the caller predicts it)
            yield _read_grouped(reader, keys[start:start + size], index, recorded, dim, truncated, first)


def _read_grouped(reader: EmbeddingsReader, keys: list[str], index: int, recorded: bool, dim: int,
                  truncated: list[str], first: dict[str, str]):
    import h5py

    from protrans_cli.heads.data import ProteinData, read_rows, refuse_non_finite

    items, rows, path = [], [], reader.path
    group, own = reader._group(PER_PROTEIN), "layout" in reader.attrs
    for key in keys:
        obj = open_local(group, key.encode("utf-8"), data=True)  # (values from other files refused)
        if not isinstance(obj, h5py.h5d.DatasetID):  # a group among the proteins: none (as _all_items has it)
            continue
        attrs = _LowAttrs(obj)
        # (dataset_id through the low-level calls: embed's `id`, bio_embeddings' `original_id`, else the key;
        # in embed's own file every key is its id's, escaped, as EmbeddingsReader._own_matrix reads them)
        ident = unescape_key(key) if own else _low_attribute_id(obj) or unescape_key(key)
        if (other := first.setdefault(ident, key)) != key:
            raise one_protein_twice(reader.path, ident, other, key)
        # A vector's `length` is read only where it is named (a truncated protein's): nothing else
        # here uses it (0: not known), and its reads were a fifth of the visit
        length = 0
        if (cut := truncated_from(attrs)) is not None:
            length = stored_length(attrs, obj.shape, per_residue=False) or 0
            truncated.append(f"{ident} ({length} of {cut})")
        items.append(Matched(ident, key, length, {}))
        rows.append(read_rows(group, key, 1, index, (dim,), str(path), ident, layers_recorded=recorded, obj=obj))
    x = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
    rows = None
    refuse_non_finite(str(path), x, items, np.arange(len(items)), per_residue=False)
    data = ProteinData.in_memory(x)  # (as ProteinData reads them: the same rows, checked the same way)
    data.path, data.items, data.lengths = str(path), items, np.array([m.length for m in items], dtype=np.int64)
    return items, data


def _slices(items: list[Matched], budget: int, by_residues: bool):
    """Consecutive slices of `items`, each within `budget` residues (or proteins); never empty."""
    start, used = 0, 0
    for i, item in enumerate(items):
        size = max(item.length, 1) if by_residues else 1
        if i > start and used + size > budget:
            yield items[start:i]
            start, used = i, 0
        used += size
    if start < len(items):
        yield items[start:]


def _csv_line(row: list, delimiter: str = ",") -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerow(row)
    return buffer.getvalue().encode()


class _ProbabilityWriter:
    """Per-residue probabilities, /<output>/<key> float32 (L, C), written as they come into a
    temporary file that replaces `path` only when the run succeeds (`staged`: atomic_output's,
    the file written out and closed, its rename left to the caller)."""

    def __init__(self, path, task, *, staged: list | None = None):
        self.target = through_link(path)
        self.task = task
        self.staged = staged

    def __enter__(self):
        parent = output_directory(self.target)
        self.tmp = str(make_temporary(parent, f".{self.target.name}."))
        # HDF5 makes it anew in the name mkstemp held: "w" opened the empty temporary with O_TRUNC,
        # and on ext4 a file truncated on opening is written back to disk when it is closed
        # (auto_da_alloc), which the run waited for. ("x": a file that took the name is never clobbered)
        os.unlink(self.tmp)
        self.h5 = h5_file(self.tmp, "x")
        self.h5.attrs["task"] = self.task.name
        for o in self.task.outputs:
            self.h5.attrs[f"classes_{o.name}"] = "".join(o.classes) if all(len(c) == 1 for c in o.classes) \
                else json.dumps(list(o.classes))
            self.h5.create_group(o.name)
        return self

    def add(self, items, probs, chains: dict | None = None) -> None:
        ensure_room(self.tmp, sum(p.size * 4 for o in self.task.outputs for p in probs[o.name]),
                    "the file was not written", shown=self.target)
        try:
            for o in self.task.outputs:
                group = self.h5[o.name]
                for item, p in zip(items, probs[o.name]):
                    ds = group.create_dataset(escape_key(item.id), data=p.astype(np.float32))  # (L, C)
                    ds.attrs["id"] = item.id
                    if chains and (lengths := chains.get(item.key)):  # (a complex: its rows are its chains')
                        ds.attrs["chains"] = np.asarray(lengths, dtype=np.int64)
                    # (closed here: HDF5 writes the data as it closes, and h5py only printed an
                    # error there, so a file missing rows could be completed and put in place)
                    ds.id.close()
        except (RuntimeError, OSError) as exc:
            if not is_write_failure(exc):
                raise
            abandon(self.h5, exc)  # (HDF5 cannot flush or close it any more; exc: its frames hold `ds`, `group`)
            self.h5 = None
            raise RuntimeFailure(f"cannot write the probabilities: {write_failure_reason(exc)}; the file was not "
                                 "written", path=str(self.target)) from None

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.h5 is None:  # (abandoned after a failed write: the temporary goes, unclosed)
                return
            try:
                self.h5.close()
            except Exception as close_error:  # noqa: BLE001 - HDF5's own two-line message names the temporary
                if is_write_failure(close_error):
                    abandon(self.h5, close_error)  # (what is left of it is not closed again at exit)
                if exc_type is not None:
                    return  # the error under way (a full disk's "no room") says what happened
                raise RuntimeFailure(f"cannot write the probabilities ({first_line(close_error)})",
                                     path=str(self.target)) from None
            if exc_type is None:
                default_permissions(self.tmp)  # mkstemp's 0600
                if self.staged is not None:  # (renamed, or removed, by the caller)
                    self.staged.append(StagedRename(self.tmp, self.target))
                    self.tmp = None
                    return
                os.replace(self.tmp, self.target)
        finally:
            if self.tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.tmp)


def _warn_extension(out, per_residue: bool) -> None:
    """The format follows the head, not the file name: `-o x.csv` on an ss3 head wrote FASTA-like
    text, and `-o x.h5` on a loc head a CSV, without a word."""
    name = bare_name(out)
    other = ((".csv", ".tsv", ".tab", ".h5", ".hdf5", ".json") if per_residue
             else (".fa", ".fasta", ".faa", ".h5", ".hdf5", ".json"))
    if str(out) != "-" and name.endswith(other):
        what = ("FASTA-like text (>id, then a line of states)" if per_residue
                else "CSV, tab-separated for a .tsv name (id, then each output's columns)")
        console.warn(f"{out}: this head's predictions are {what}, whatever the file's extension")


def _fitted_mask_columns(config: dict) -> tuple:
    recorded = (config.get("config") or {}).get("mask_columns")
    # ([]: fit without a mask; a str: one column, as heads fit with FitConfig(mask_columns="name") recorded it)
    return ("disorder",) if recorded is None else mask_column_names(recorded)


def check_labels_first(head_config: dict, labels, *, label_format: str = "auto", mask_path=None,
                       mask_columns=None) -> None:
    """`predict --fasta --labels`: read the label file before the FASTA is embedded, so that a bad
    one fails at once, not after hours of embedding (it is read again, and matched, once the
    embeddings exist). stdin or a pipe, which can be read once, is left to that later reading.
    `head_config`: the head's config.json (load_head's third item)."""
    from protrans_cli.embed import is_stream

    if str(labels) == "-" or is_stream(labels) or (mask_path is not None and (str(mask_path) == "-"
                                                                            or is_stream(mask_path))):
        return
    columns = _fitted_mask_columns(head_config) if mask_columns is None else mask_column_names(mask_columns)
    read_labels(labels, label_format, mask_path=mask_path, mask_columns=columns)


def scored_labels(head_dir, embeddings, labels, *, label_format: str = "auto", mask_path=None,
                  mask_columns=None, on_mismatch: str = "error", allow_model_mismatch: bool = False):
    """The labels `evaluate_head` scores, read and matched to `embeddings`: (label set, matched
    items, match report). Separate so that `predict --labels` finds a bad label file before it
    writes any prediction. A file that assigns its records to splits (FLIP's SET=, a table's set
    column) contributes its test records only, as a `fit --test` file does."""
    from protrans_cli.heads.labels import TEST, unmasked_flip_warning
    from protrans_cli.heads.model import head_input_kind, load_head

    _, task, config = load_head(head_dir)
    fitted = _fitted_mask_columns(config)
    if mask_columns is None:
        # The head's own (`fit --mask-column disorder --mask-column cb513_mask`): predict scored
        # CB513 on disorder alone, 140,486 positions where fit --test had 83,427, without a word
        mask_columns = fitted
    elif (mask_columns := resolve_mask_columns(task.name, mask_column_names(mask_columns))) != fitted:
        console.info(f"scoring with --mask-column {' '.join(mask_columns) or '(none)'}; the head was fit with "
                     f"{' '.join(fitted) or 'no mask column'}")
    with EmbeddingsReader(embeddings) as reader:
        check_compatible(config, reader, allow_model_mismatch=allow_model_mismatch)
        label_set = read_labels(labels, label_format, mask_path=mask_path, mask_columns=tuple(mask_columns))
        for note in label_set.notes:
            console.info(f"{label_set.path}: {note}")
        if warning := unmasked_flip_warning(label_set, task.output_names):
            fit_mask = (config.get("config") or {}).get("mask_path")
            console.warn(f"{label_set.path}: {warning}" + (f"; the head was fit with --mask {fit_mask}" if fit_mask else ""))
        splits = {r.split for r in label_set.records}
        if TEST in splits and len(splits) > 1:
            kept = [r for r in label_set.records if r.split == TEST]
            others = ", ".join(sorted({s or "train" for s in splits - {TEST}}))
            console.info(f"{label_set.path}: scoring its {len(kept)} test records (its other "
                         f"{len(label_set.records) - len(kept)} are {others})")
            aside = [r.id for r in label_set.records if r.split != TEST]
            label_set = dataclasses.replace(label_set, records=kept)
        else:
            aside = []
            if len(splits) > 1:  # (train and validation records, none for test: scored, said)
                held = ", ".join(sorted(s or "train" for s in splits))
                console.warn(f"{label_set.path}: it assigns its records to {held} and none to test: they are "
                             "scored whatever their split (a head scored on the proteins it was trained or stopped "
                             "on looks better than it is)")
        kind = head_input_kind(config, task)
        items, report = match_labels(label_set, reader, task, kind=kind, on_mismatch=on_mismatch, evaluating=True)
        # (the file's other splits have labels: not "N protein(s) have no label in FILE")
        source = _source_kind(reader, kind)
        report.unlabelled -= {reader.key_for(ident, source) for ident in aside}
    return label_set, items, report


def check_head_output(task, output: str | None) -> None:
    """--head-output names one of a per-residue head's outputs (checked before `--fasta` embeds)."""
    if output is not None and output not in task.output_names:
        raise UsageError(f"the head has no output {output!r} (it has {', '.join(task.output_names)})")
    if output is not None and task.kind != PER_RESIDUE:
        raise UsageError(f"{option('--head-output', 'output')} is for per-residue heads; the CSV of a per-protein "
                         "head holds every output")


def _check_max_residues(max_residues) -> None:
    # 0 or a negative budget was taken (fit refuses it): what it did depended on the batching code
    # ("100" was "at least 1, got 100"; numpy's integers count as Python's)
    if not whole_number(max_residues):
        raise UsageError(f"{option('--max-residues', 'max_residues')} must be a whole number, got "
                         f"{type(max_residues).__name__} "
                         f"{max_residues!r:.60}")
    at_least(max_residues, 1, "--max-residues", keyword="max_residues")


@torch_threads()  # puts the caller's torch thread count back
def evaluate_head(head_dir, embeddings, labels, *, metrics_dir=None, label_format: str = "auto", mask_path=None,
                  mask_columns=None, on_mismatch: str = "error", allow_model_mismatch: bool = False,
                  n_boot: int | None = None, max_residues: int = 8192, threads: int | None = None,
                  device: str = "auto", scored=None, seed: int | None = None, predicted: dict | None = None,
                  plots: bool = True, staged: list | None = None) -> dict:
    """Score a head on labelled embeddings: {output: metrics}; writes <metrics_dir>/<set>.json if
    given, and its PNGs unless `plots` is False, renamed together once all are complete.
    `staged`: as predict's (the files written out, renamed by the caller with its other outputs).
    `scored`: what `scored_labels` returned for the same arguments (else it is called here).
    `predicted`: what `predict(..., labelled=<scored's items>)` returned as "predicted" (`predict
    --labels -o`): scored as it is; else the matched proteins are read and predicted here.
    `n_boot`/`seed` of the bootstrap CI: by default those the head's fit used (its --bootstrap and
    --seed), so that predict reports the very CI that fit reported for the same test set."""
    import torch

    from protrans_cli.heads.fit import (MIN_RESAMPLES, head_device, kept_for_scoring, predict_data,
                                        score_predictions, write_metrics)
    from protrans_cli.heads.model import head_input_kind, load_head
    from protrans_cli.threads import resolve_threads

    _check_max_residues(max_residues)
    _refuse_outputs_over_inputs(head_dir, embeddings, None, metrics_dir=metrics_dir)
    if n_boot is not None:
        from protrans_cli.heads.fit import check_resamples

        check_resamples(n_boot, "n_boot")
    if scored is None:
        scored = scored_labels(head_dir, embeddings, labels, label_format=label_format, mask_path=mask_path,
                               mask_columns=mask_columns, on_mismatch=on_mismatch,
                               allow_model_mismatch=allow_model_mismatch)
    label_set, items, report = scored
    ensemble, task, config = load_head(head_dir)
    reads = head_input_kind(config, task)
    torch.set_num_threads(resolve_threads(threads, small_work=reads != PER_RESIDUE))
    if predicted is not None and any(v is None for values in predicted.values() for v in values):
        predicted = None  # (a labelled protein the prediction pass did not meet: read and predicted here)
    if predicted is None:  # (no `predict` before: the matched proteins are read and predicted here)
        ensemble.to(head_device(device))
        chains = chains_of(embeddings, items) if task.kind == PER_RESIDUE else {}  # (read by chain, as predict reads them)
        data = head_data(embeddings, chain_items(items, chains), task, reads, layer=head_layer(config))
        predicted = kept_for_scoring(task, joined_chains(predict_data(ensemble, task, data, max_residues=max_residues),
                                                         items, chains))
    report_unlabelled(embeddings, labels, [report], "not scored")
    # fit seeds its bootstrap with --seed: with seed 0 always, `fit --seed 3` and `predict --labels`
    # printed different CIs for the same predictions on the same set.
    fitted = config.get("config", {})
    if n_boot is None:
        n_boot = int(fitted.get("n_bootstrap", 1000))
        if n_boot < MIN_RESAMPLES:  # (a finetune head of a version that took --bootstrap 1: a "95% CI" of one resample)
            console.info(f"{head_dir}: the head records {n_boot} bootstrap resample(s), too few for a 95% CI: "
                         "scored with 1000")
            n_boot = 1000
    seed = int(fitted.get("seed", 0)) if seed is None else seed
    result = score_predictions(task, items, predicted, n_boot=n_boot, seed=seed)
    if metrics_dir is not None:
        Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        with staged_outputs(staged) as staged:
            write_metrics(Path(metrics_dir), label_set.name, result, str(embeddings), str(labels), plots=plots,
                          staged=staged)
    else:
        from protrans_cli.heads.metrics import summary_line

        for name, m in result.items():
            console.info(summary_line(label_set.name, name, m))
    return result

"""Predictions in memory, for a notebook: a head run on arrays, or on sequences embedded with the
model the head was fit on, with no file on either side.

    from protrans_cli import predict_sequences, predict_embeddings, embed_sequences
    predict_sequences("heads/ss3", {"P1": "MKTAYIAKQR"})["P1"]["ss3"].labels    # H, E or C a residue
    vectors = embed_sequences(seqs, EmbedOptions(model="prot_t5_xl_half"), kind="per_protein")
    predict_embeddings("heads/loc", vectors)["P1"]["loc"].probabilities          # (10,) in class order

Each output of the head gives a `Prediction`: `labels`, a string of one class letter per residue
(a per-residue head) or the class name (a per-protein head) or the value (a value head);
`probabilities`, the ensemble's mean class probabilities ((L, C) or (C,), in `classes` order;
None for a value). They are what `protrans predict` writes for the same embeddings (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from protrans_cli.errors import UsageError, expect_path, whole_number
from protrans_cli.io.h5 import PER_RESIDUE
from protrans_cli.threads import torch_threads


@dataclass
class Prediction:
    labels: str | float          # per residue: one letter each; per protein: the class name; a value head: the value
    probabilities: np.ndarray | None  # (L, C) or (C,), float32, in `classes` order; None for a value
    classes: tuple[str, ...]     # the output's classes (empty for a value)


@torch_threads()  # puts the caller's torch thread count back
def predict_embeddings(head_dir, embeddings, *, device: str = "auto", threads: int | None = None,
                       max_residues: int = 8192):
    """The head's predictions for embeddings in memory: `embeddings` is {id: array} (returns
    {id: {output: Prediction}}) or a list of arrays (returns a list, in order). A per-residue
    head takes (L, D) arrays; a per-protein head (D,) vectors, or (L, D) arrays, averaged over
    their rows as `predict` averages a file's per-residue embeddings (not for a head fit on
    cls-pooled vectors, `embed --pooling cls`: (D,) cls vectors only). D must be the head's input
    width; the arrays must come from the model and layer the head was fit on (an array carries
    neither, so that cannot be checked here: `predict_sequences` embeds with them). A Light
    Attention head (a per-protein task that reads every residue) takes (L, D) arrays of at least
    one residue."""
    import torch

    from protrans_cli.heads.data import ProteinData, ResidueData
    from protrans_cli.heads.fit import head_device, predict_data
    from protrans_cli.heads.model import head_input_kind, load_head
    from protrans_cli.io.h5 import pooling_kind
    from protrans_cli.threads import resolve_threads

    expect_path(head_dir, "head_dir", " (the head's directory)")
    if isinstance(embeddings, (str, bytes)) or hasattr(embeddings, "read") or not hasattr(embeddings, "__iter__"):
        raise UsageError("embeddings is {id: array} or a list of arrays (an embeddings file goes to "
                         f"protrans_cli.predict), got {type(embeddings).__name__}")
    # (numpy's integers count as Python's: np.int64(4096) was refused as "not a whole number")
    if not whole_number(max_residues) or max_residues < 1:
        raise UsageError(f"max_residues must be a whole number of at least 1, got {max_residues!r:.40}")
    max_residues = int(max_residues)
    as_list = not isinstance(embeddings, Mapping)
    pairs = list(enumerate(embeddings)) if as_list else list(embeddings.items())
    ensemble, task, config = load_head(head_dir)
    per_residue = task.kind == PER_RESIDUE  # what it predicts
    reads_residues = head_input_kind(config, task) == PER_RESIDUE  # what it reads
    width = int(config["input_dim"])
    # a head fit on cls-pooled vectors (embed --pooling cls) never saw a mean of rows: averaging an
    # (L, D) array gave it another input than it was fit on, and a silently wrong prediction
    cls_pooled = not reads_residues and pooling_kind(config.get("embedding", {}).get("pooling")) == "cls"
    arrays = [_checked(ident, array, width, reads_residues, pooled_here=not per_residue, cls_pooled=cls_pooled)
              for ident, array in pairs]
    torch.set_num_threads(resolve_threads(threads, small_work=not reads_residues))
    ensemble.to(head_device(device))
    # batched, padded and run as `predict` runs a file's (an empty per-residue array: nothing to run)
    kept = [i for i, a in enumerate(arrays) if len(a) or not reads_residues]
    data = (ResidueData.in_memory([arrays[i] for i in kept], width) if reads_residues
            else ProteinData.in_memory(np.stack(arrays) if arrays else np.zeros((0, width), np.float32)))
    found = predict_data(ensemble, task, data, max_residues=max_residues)
    probs: list[dict] = [{o.name: np.zeros((0, len(o.classes)), np.float32) for o in task.outputs} for _ in arrays]
    for j, i in enumerate(kept):
        probs[i] = {name: found[name][j] for name in found}
    results = [{o.name: _prediction(o, p[o.name], per_residue) for o in task.outputs} for p in probs]
    return results if as_list else {ident: result for (ident, _), result in zip(pairs, results)}


def predict_sequences(head_dir, sequences, *, model: str | None = None, device: str = "auto",
                      threads: int | None = None, invalid_policy: str = "error", chains: str | None = None,
                      linker_length: int | None = None):
    """Embed `sequences` ({id: sequence}, or a list) with the model and layer the head was fit on
    (as `protrans predict --fasta` does: its recorded model, per residue or per protein as the
    head needs, and its training embeddings' long-protein policy; `model` replaces the recorded
    model, e.g. the same weights in a local directory) and predict: {id: {output: Prediction}},
    or a list in order. A protein that could not be embedded is left out (None in a list), with
    a warning naming it, as `embed_sequences` leaves it out. `invalid_policy` is predict --fasta's
    --invalid-policy: a sequence that cannot be embedded (a J, an inner '*', no residues) is an
    error ("error"), or left out so ("skip"). `chains`, `linker_length`: complexes (chains joined
    by ':' in one sequence), as predict --fasta's --chains and --linker-length (default: as the
    head records them, a finetune's --chains or a fit head's training embeddings'; else a ':' is
    refused); a per-residue head reads each chain of a complex as a protein of its own, and its
    `labels` have a ':' between the chains, as its sequence has them (its `probabilities` are the
    (L, C) rows of all its chains, in order)."""
    from protrans_cli.embed import embed_sequences
    from protrans_cli.heads.data import by_chain
    from protrans_cli.heads.model import head_input_kind
    from protrans_cli.heads.predict import head_embed_options

    expect_path(head_dir, "head_dir", " (the head's directory)")
    # (the error for one such sequence said "--invalid-policy skip leaves such records out", which
    # this call did not take: one bad sequence failed the whole call)
    options, config = head_embed_options(head_dir, model=model, device=device, threads=threads,
                                         invalid_policy=invalid_policy, chains=chains, linker_length=linker_length)
    embedded = embed_sequences(sequences, options, kind=head_input_kind(config))  # (checked by head_embed_options)
    # (another model's width was "protein 0: an embedding of shape (32,), the head takes ...":
    # the protein blamed for what the model given makes of every protein)
    width = next((np.shape(a)[-1] for a in (embedded if isinstance(embedded, list) else embedded.values())
                  if a is not None), None)
    if width is not None and width != int(config["input_dim"]):
        recorded = config.get("embedding", {}).get("model")
        raise UsageError(f"{options.model} gives {width}-d embeddings; the head was fit on {config['input_dim']}-d "
                         f"embeddings of {recorded}" + (": give model= a copy of that model, or leave model out"
                                                        if model is not None else ""))
    as_list = isinstance(embedded, list)
    pairs = list(enumerate(embedded)) if as_list else list(embedded.items())
    kept = [(ident, array) for ident, array in pairs if array is not None]
    # a per-residue head reads each chain of a complex as a protein of its own (as predict does)
    lengths = _chain_lengths(sequences, kept, options) if _per_residue_task(config) else {}
    pieces = [piece for ident, array in kept for piece in by_chain(array, lengths.get(ident))]
    found = iter(predict_embeddings(head_dir, pieces, device=device, threads=threads))
    predicted = {ident: _joined([next(found) for _ in lengths.get(ident) or (None,)]) for ident, _ in kept}
    if as_list:
        return [predicted.get(i) for i in range(len(embedded))]
    return predicted


def _per_residue_task(config: dict) -> bool:
    from protrans_cli.heads.tasks import Task

    return Task.from_json(config["task"]).kind == PER_RESIDUE


def _chain_lengths(sequences, kept, options) -> dict:
    """{id: chain lengths} of the complexes (a ':' in the sequence) among the embedded `kept`
    (id, rows): each chain's residues as embed reads them."""
    from protrans_cli.embed import _normalise_record

    if options.chains == "error":
        return {}
    lengths = {}
    for ident, array in kept:
        sequence = sequences[ident]
        if (":" if isinstance(sequence, str) else b":") in sequence:
            chains = [len(c) for c in _normalise_record(sequence, None, options.chains).split(":")]
            if sum(chains) == len(array):  # (its rows are its chains': embed dropped any linker)
                lengths[ident] = chains
    return lengths


def _joined(parts: list[dict]) -> dict:
    """The Predictions of a complex's chains (one {output: Prediction} a chain) as one: labels with
    a ':' between the chains, probabilities of all the chains' residues in order."""
    if len(parts) == 1:
        return parts[0]
    return {name: Prediction(":".join(p[name].labels for p in parts),
                             np.concatenate([p[name].probabilities for p in parts]), parts[0][name].classes)
            for name in parts[0]}


def _checked(ident, array, width: int, per_residue: bool, *, pooled_here: bool = False,
             cls_pooled: bool = False) -> np.ndarray:
    """`array` as float32 of the shape the head takes, or a usage error naming the protein.
    `per_residue`: the head reads (L, D) rows; `pooled_here`: and pools them to one prediction
    (Light Attention), so a protein needs one residue at least; `cls_pooled`: a per-protein head
    fit on cls vectors, which takes (D,) only (the mean of rows is not its input)."""
    if _is_tensor(array):
        # a model's output as it comes: one that requires grad (RuntimeError "Can't call numpy()"),
        # in bfloat16 or on a GPU ("not an array of numbers") could not be read as numpy reads it
        array = array.detach().to("cpu", copy=False).float()
    try:
        a = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError):
        raise UsageError(f"protein {ident!r}: its embedding is not an array of numbers ({type(array).__name__})") from None
    want = "(L, D)" if per_residue else "(D,) or (L, D)"
    if a.ndim not in ((2,) if per_residue else (1, 2)) or a.shape[-1] != width:
        layers = " (several layers: pick the one the head was fit on)" if a.ndim == 3 else ""
        raise UsageError(f"protein {ident!r}: an embedding of shape {a.shape}, the head takes {want} with D = "
                         f"{width}{layers}")
    if not np.isfinite(a).all():
        raise UsageError(f"protein {ident!r}: its embedding holds NaN or infinite values")
    if per_residue and pooled_here and not len(a):
        raise UsageError(f"protein {ident!r}: an embedding of no residue has nothing to attend to")
    if not per_residue and a.ndim == 2:
        if cls_pooled:
            raise UsageError(f"protein {ident!r}: an embedding of shape {a.shape} would be averaged over its rows, "
                             "and the head was fit on per-protein vectors pooled by cls: give its (D,) cls vector "
                             "(embed with pooling='cls'), or the sequences to predict_sequences")
        if not len(a):
            raise UsageError(f"protein {ident!r}: an embedding of no residue has no mean")
        a = a.mean(axis=0)
    return np.ascontiguousarray(a)


def _is_tensor(value) -> bool:
    """Whether `value` is a torch tensor (without importing torch where the caller has not)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _prediction(output, p: np.ndarray, per_residue: bool) -> Prediction:
    if output.is_value:
        return Prediction(float(p[0]), None, ())
    if per_residue:
        labels = "".join(output.classes[k] for k in p.argmax(-1)) if len(p) else ""
    else:
        labels = output.classes[int(p.argmax())]
    return Prediction(labels, p.astype(np.float32, copy=False), tuple(output.classes))

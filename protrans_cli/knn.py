"""Nearest neighbours in embedding space, and annotation transfer by them (EAT, goPredSim).

    result = nearest("query.h5", "swissprot.h5", k=1)            # ids, distances
    knn("query.h5", "swissprot.h5", "hits.tsv", labels="swissprot_loc.fasta")

A query protein's neighbours are the reference proteins whose per-protein vectors lie closest to
its own: Euclidean distance (the embedding-based annotation transfer of Littmann et al. 2021 and
Heinzinger et al. 2022 with ProtT5) or cosine distance (1 - cosine similarity). The reference
is held in memory as float32 (N x D: 570,000 Swiss-Prot proteins at 1024-d are 2.3 GB); queries
are compared with it a slice at a time, so the distances held are bounded (QUERY_SLICE x
REFERENCE_SLICE). Distances come from one matrix product (|q|^2 + |r|^2 - 2 q.r), which loses
digits for near neighbours; the best k + MARGIN candidates of every query are measured again
exactly (in float64, from the vectors) and ranked by those distances, ties by reference order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from protrans_cli import console
from protrans_cli.choices import DEFAULT_LINKER_LENGTH
from protrans_cli.errors import InputError, ModelError, UsageError, expect_path, one_of, option, whole_number
from protrans_cli.io.files import display_name, named_delimiter, tsv_quoted
from protrans_cli.io.h5 import PER_PROTEIN, EmbeddingsReader, same_weights

METRICS = ("euclidean", "cosine")
QUERY_SLICE = 1024
REFERENCE_SLICE = 16384
MARGIN = 8  # candidates beyond k measured exactly (a near tie the product misordered)
# DeepLoc's membrane label `U` means unknown (fit leaves it out): never a label to score against
UNKNOWN = {"deeploc": {"membrane": {"U"}}}


@dataclass
class Neighbours:
    query_ids: list[str]
    reference_ids: list[str]
    index: np.ndarray      # (Q, min(k, N)) int64 positions in reference_ids; -1 where fewer exist
    distance: np.ndarray   # (Q, min(k, N)) float64; nan where index is -1
    metric: str = "euclidean"


@dataclass
class Transfer:
    """What knn() did: the neighbours, the columns transferred and the scores (with `score`)."""

    neighbours: Neighbours
    columns: list[str] = field(default_factory=list)
    scores: dict = field(default_factory=dict)  # column -> metrics dict (heads.metrics.evaluate)


def layer_on_axis(reader, layer: int, n_layers: int | None) -> int:
    """Where `layer` lies on the layer axis of a file's arrays (`n_layers` long; None: no axis, one
    layer stored): `stored_layer_index`, or in a file that records no layer numbers (another
    tool's) `layer` itself, an index that must exist on that axis (-1 or 0 without one), as export
    and fit read such files (an index past the axis was an IndexError traceback, and any --layer
    on one layer was taken silently)."""
    from protrans_cli.heads.data import stored_layer_index

    if reader.attrs.get("layers") is not None:
        return stored_layer_index(reader, layer)
    if n_layers is None:
        if layer not in (-1, 0):
            raise InputError(f"holds one layer (no layer axis, no layer numbers recorded), not layer {layer}",
                             path=str(reader.path))
        return 0
    if not -n_layers <= layer < n_layers:
        raise InputError(f"holds {n_layers} layers on its arrays' first axis (the file records no layer numbers: "
                         f"{option('--layer', 'layer')} indexes that axis, {-n_layers} to {n_layers - 1}), not layer "
                         f"{layer}",
                         path=str(reader.path))
    return layer


def _vectors(path, layer: int, what: str, chosen=None) -> tuple[list[str], np.ndarray, EmbeddingsReader]:
    """(ids, (N, D) float32) of a file's per-protein vectors at `layer`; `chosen`: (ids, id ->
    sequence or None, the file naming them) of an --ids file (export.read_id_list's), whose
    proteins alone are read, in its order (export.selected_ids: each must be in the file)."""
    with EmbeddingsReader(path) as reader:
        _refuse_residues_only(reader, what, path)
        stacked = reader._stacked
        attrs = dict(reader.attrs)
        rows, order = None, None
        if chosen is not None:
            from protrans_cli.export import selected_ids

            order = selected_ids(reader, PER_PROTEIN, *chosen)
        if stacked is not None:
            # (a stacked file's ids without the id -> row dict, its vectors read as float32 a block at a
            # time: the stored array whole and its float32 copy held 1.5x the vectors' float32 bytes)
            ids, matrix = stacked.listed_ids(), stacked.data
            if order is not None:
                rows = _rows_of(reader, ids, order, chosen[2])
                ids = [ids[r] for r in rows]
        elif order is not None:
            # (the selected proteins' datasets alone, named by the file's ids as the whole search
            # names them: another tool's key, a whole header line, is the reference's id there too,
            # which --exclude-self compares; every protein's vector was read to keep 10 of them)
            ids, matrix = reader.selected_matrix(order)
        else:
            ids, matrix = reader.matrix(PER_PROTEIN)
        at = None
        if matrix.ndim == 3:  # several layers stored: (N, n_layers, D)
            at = layer_on_axis(reader, layer, matrix.shape[1])
            matrix = matrix[:, at, :] if stacked is None else matrix
        elif layer != -1:
            layer_on_axis(reader, layer, None)  # (one layer stored: the one asked for, or an error naming it)
        if stacked is not None:
            matrix = stacked.take(np.arange(len(stacked)) if rows is None else rows, at)
    if matrix.ndim != 2:
        raise InputError(f"{what}: per-protein vectors of shape {matrix.shape[1:]}, not (D,)", path=str(path))
    vectors = np.ascontiguousarray(matrix, dtype=np.float32)
    bad = np.concatenate([~np.isfinite(vectors[i:i + 65536]).all(axis=1) for i in range(0, len(vectors), 65536)]
                         or [np.zeros(0, dtype=bool)])
    if bad.any():
        raise InputError(f"{what}: {int(bad.sum())} protein(s) have NaN or infinite values (first: "
                         f"{ids[int(np.flatnonzero(bad)[0])]})", path=str(path))
    return ids, vectors, attrs


def _rows_of(reader: EmbeddingsReader, ids: list[str], order: list[str], source) -> np.ndarray:
    """The rows of `ids` (a file's, as read) of the proteins `order` names (selected_ids' answer):
    by id, else (another tool's file: a key that is a whole header line, a protein found by its
    sequence) by the dataset its id finds."""
    position = {ident: i for i, ident in enumerate(ids)}
    by_key = None
    rows = []
    for ident in order:
        row = position.get(ident)
        if row is None:
            if by_key is None:
                by_key = {reader.key_for(i, PER_PROTEIN): r for r, i in enumerate(ids)}
            row = by_key.get(reader.key_for(ident, PER_PROTEIN))
        if row is None:  # (selected_ids found it: not expected)
            raise InputError(f"protein {ident!r} is not among the per-protein vectors read from {reader.path}",
                             path=display_name(source))
        rows.append(row)
    return np.array(rows, dtype=np.int64)


def _refuse_residues_only(reader: EmbeddingsReader, what: str, path) -> None:
    if reader._kind_guessed:  # (a flat file with no dataset, kind unrecorded: "per-residue embeddings only")
        raise InputError(f"{what}: holds no protein", path=str(path))
    if PER_PROTEIN not in reader.kinds:
        raise InputError(f"{what}: holds per-residue embeddings only; knn compares per-protein vectors (embed with "
                         + option("--per-protein, or without --per-residue)", "per_protein=True)"), path=str(path))


def _check_same_model(query, q_attrs: dict, r_attrs: dict, allow: bool,
                      roles: tuple[str, str] = ("the queries", "the reference")) -> None:
    """`roles`: what the message calls the two files' proteins (project: an input's and the first's)."""
    from protrans_cli.embed import other_weights, same_model
    from protrans_cli.heads.predict import mismatch

    q_model, r_model = q_attrs.get("model"), r_attrs.get("model")
    # (same_weights: one model directory's weights at another path, the directory moved or copied)
    if q_model and r_model and not same_model(str(q_model), str(r_model)) and not same_weights(r_attrs, q_attrs):
        message = (f"{roles[0]} come from model {q_model!r}, {roles[1]} from {r_model!r}: their distances mean "
                   "nothing")
        mismatch(message, query, allow)
    elif differ := other_weights(r_attrs, q_attrs):
        # (one local model directory retrained between the two embed runs: the same name, other weights)
        message = (f"{roles[0]} and {roles[1]} come from other weights of the model directory {q_model!r} "
                   f"({differ}: retrained or replaced between the two runs?): their distances mean nothing")
        mismatch(message, query, allow)


def _check_same_pooling(query, q_attrs: dict, r_attrs: dict, allow: bool,
                        roles: tuple[str, str] = ("the queries", "the reference")) -> None:
    """Vectors of a cls token (embed --pooling cls) are compared with vectors of a cls token."""
    from protrans_cli.heads.predict import mismatch
    from protrans_cli.io.h5 import pooling_kind

    q_pooling, r_pooling = pooling_kind(q_attrs.get("pooling")), pooling_kind(r_attrs.get("pooling"))
    if q_pooling != r_pooling:
        message = (f"{roles[0]} are pooled by {q_pooling}, {roles[1]} by {r_pooling} (embed --pooling): their "
                   f"distances mean nothing; embed {roles[0]} with --pooling {r_pooling}")
        mismatch(message, query, allow)


def nearest(query, reference, *, k: int = 1, metric: str = "euclidean", layer: int = -1,
            exclude_self: bool = False, allow_model_mismatch: bool = False, threads: int | None = None,
            device: str = "auto", ids=None) -> Neighbours:
    """The k nearest reference proteins of every query protein (per-protein vectors of two
    embeddings files, or one file given twice with `exclude_self`); `device`: where the
    distances are computed (auto: a GPU when there is one); `ids`: a FASTA or id-list file
    ('-': stdin) of the query proteins to search, in its order (as export's `ids`)."""
    q_ids, q, ref_ids, ref = _prepared(query, reference, k, metric, layer, allow_model_mismatch,
                                       _id_list(ids))
    return _neighbours(q_ids, q, ref_ids, ref, int(k), metric, exclude_self, threads, device)


def _id_list(ids):
    """(ids, id -> sequence or None, `ids`) of an --ids file (export.read_id_list), None without one."""
    if ids is None:
        return None
    from protrans_cli.export import read_id_list

    expect_path(ids, "knn: ids", " (one file, or '-' for stdin)")
    return (*read_id_list(ids), ids)


def _prepared(query, reference, k, metric: str, layer: int, allow_model_mismatch: bool, chosen=None):
    """(query ids, query vectors, reference ids, reference vectors), checked (as stored: cosine
    scales by 1 / length in the search); `chosen`: _id_list's, the queries searched."""
    for name, value in (("query", query), ("reference", reference)):
        expect_path(value, name)
    _check_search(k, metric, layer)
    ref_ids, ref, r_attrs = _reference_vectors(reference, layer)
    q_ids, q, q_attrs = _vectors(query, layer, "query", chosen)
    _check_pair(query, reference, q, ref, q_attrs, r_attrs, metric, allow_model_mismatch)
    return q_ids, q, ref_ids, ref


def _check_search(k, metric: str, layer=-1) -> None:
    # (numpy's integers count as Python's, as in every settings object: k=np.int64(3) was refused
    # as "-k must be at least 1", and layer="-1" a TypeError from the layer lookup)
    if not whole_number(k) or k < 1:
        raise UsageError(f"{option('-k', 'k')} must be at least 1, got {k!r}")
    if not whole_number(layer):
        raise UsageError(f"{option('--layer', 'layer')} is a whole number (-1: the last layer), got "
                         f"{type(layer).__name__} {layer!r:.40}")
    one_of(metric, METRICS, "--metric", keyword="metric")


def _reference_vectors(reference, layer: int):
    ref_ids, ref, r_attrs = _vectors(reference, layer, "reference")
    if not len(ref_ids):
        raise InputError("reference: holds no protein", path=str(reference))  # (as _vectors says it)
    return ref_ids, ref, r_attrs


def _check_pair(query, reference, q, ref, q_attrs: dict, r_attrs: dict, metric: str,
                allow_model_mismatch: bool) -> None:
    if q.shape[1] != ref.shape[1]:
        raise ModelError(f"queries are {q.shape[1]}-d, the reference ({reference}) {ref.shape[1]}-d: embed both "
                         "with one model and layer", path=str(query))
    _check_same_model(query, q_attrs, r_attrs, allow_model_mismatch)
    _check_same_pooling(query, q_attrs, r_attrs, allow_model_mismatch)
    if metric == "cosine":
        for m, path in ((q, query), (ref, reference)):
            zero = ~m.any(axis=1)
            if zero.any():
                raise InputError(f"a vector of length 0 has no direction (cosine): {int(zero.sum())} protein(s)",
                                 path=str(path))


def reference_embed_options(reference, *, layer: int = -1, model: str | None = None, device: str = "auto",
                            threads: int | None = None, long_policy: str | None = None,
                            max_length: int | None = None, chunk_overlap: int | None = None,
                            invalid_policy: str = "error", chains: str = "error",
                            linker_length: int | None = None, allow_model_mismatch: bool = False):
    """EmbedOptions that embed query sequences as the reference's per-protein vectors were made:
    its `model` attribute (or `model`, e.g. a local copy), the layer of it `layer` picks, and its
    long-protein policy, length and overlap unless given (as `predict --fasta` does a head's);
    `chains`, `linker_length`: complexes, as embed's (default: refused)."""
    from protrans_cli.esm_import import SOURCE as ESM_EXTRACT  # (the model import-esm records when not told it)
    from protrans_cli.heads.data import stored_layer_index
    from protrans_cli.heads.predict import recorded_embed_options
    from protrans_cli.io.h5 import input_prefix_of

    expect_path(reference, "reference")
    with EmbeddingsReader(reference) as reader:
        _refuse_residues_only(reader, "reference", reference)  # (before the queries are embedded, not after)
        attrs = dict(reader.attrs)
        stored = attrs.get("layers")
        # The model layer as embed numbers it: the one of the reference's that --layer picks (a
        # file without `layers`, another tool's: --layer itself).
        index = stored_layer_index(reader, layer)
        model_layer = int(np.atleast_1d(stored)[index]) if stored is not None else layer
    name = model or (str(attrs["model"]) if attrs.get("model") else None)
    if not name:
        raise UsageError(f"{reference} does not record which model made its embeddings: give "
                         + option("-m (the model) with --fasta", "model (the model) with fasta"))
    if model is None and name == ESM_EXTRACT:
        # import-esm without -m records the tool, not the model: it was loaded as a model named
        # "esm-extract" (a hub download error) once the FASTA had been read
        raise UsageError(f"{reference} was imported from esm-extract without naming the model (import-esm -m): "
                         "give -m (the ESM model that made it, e.g. esm2_t33_650M_UR50D) with --fasta")
    recorded = {key: attrs.get(key) for key in ("long_policy", "max_length", "chunk_overlap", "revision", "commit",
                                                "pooling", "weights_fingerprint")}
    recorded["input_prefix"] = input_prefix_of(attrs)
    return recorded_embed_options(recorded, "the reference's embeddings", model=name, layer=model_layer,
                                  per_residue=False, device=device, threads=threads, long_policy=long_policy,
                                  max_length=max_length, chunk_overlap=chunk_overlap, invalid_policy=invalid_policy,
                                  chains=chains, linker_length=DEFAULT_LINKER_LENGTH if linker_length is None
                                  else linker_length, same_model=model is None,
                                  allow_model_mismatch=allow_model_mismatch)


def _neighbours(q_ids, q, ref_ids, ref, k, metric, exclude_self, threads, device: str = "cpu") -> Neighbours:
    import torch

    from protrans_cli.heads.fit import head_device
    from protrans_cli.threads import resolve_threads, torch_threads

    position = {ident: i for i, ident in enumerate(ref_ids)} if exclude_self else None
    with torch_threads(resolve_threads(threads)):
        index, distance = _search(torch, q, ref, k, metric, [position.get(i, -1) for i in q_ids] if position else None,
                                  head_device(device))
    return Neighbours(list(q_ids), list(ref_ids), index, distance, metric)


def _search(torch, q: np.ndarray, ref: np.ndarray, k: int, metric: str, own: list[int] | None, device=None):
    """(index, distance) of the k nearest; the matrix products on `device` (a GPU holds the
    reference, N x D float32), the exact float64 pass on the CPU."""
    device = device or torch.device("cpu")
    n_ref = len(ref)
    keep = min(k + MARGIN + (1 if own else 0), n_ref)
    R = torch.from_numpy(ref).to(device)
    # ((R * R) held a copy of the reference)
    r_norm = torch.from_numpy(np.einsum("ij,ij->i", ref, ref)).to(device)
    # cosine: the vectors as they are, scaled by 1 / length (in float64, for the exact pass too)
    r_inv = 1.0 / np.linalg.norm(ref.astype(np.float64), axis=1) if metric == "cosine" else None
    r_inv32 = torch.from_numpy(r_inv.astype(np.float32)).to(device) if r_inv is not None else None
    # (at most the reference's N columns: -k 100000000 allocated queries x k int64 and float64, an
    # out-of-memory error for a few proteins, where the docs promise fewer rows)
    index = np.full((len(q), min(k, n_ref)), -1, dtype=np.int64)
    distance = np.full(index.shape, np.nan, dtype=np.float64)
    for start in range(0, len(q), QUERY_SLICE):
        Q = torch.from_numpy(q[start:start + QUERY_SLICE]).to(device)
        q_norm = torch.from_numpy(np.einsum("ij,ij->i", q[start:start + QUERY_SLICE],
                                            q[start:start + QUERY_SLICE]))[:, None].to(device)
        queries = q[start:start + QUERY_SLICE].astype(np.float64)
        q_inv = 1.0 / np.linalg.norm(queries, axis=1) if metric == "cosine" else None
        q_inv32 = torch.from_numpy(q_inv.astype(np.float32))[:, None].to(device) if q_inv is not None else None
        best_d = best_i = None
        for r0 in range(0, n_ref, REFERENCE_SLICE):
            block = R[r0:r0 + REFERENCE_SLICE]
            # In place: the expressions made three or four (Q, R) temporaries at once, and the
            # previous slice's distances were still held: some 300 MB on the CPU for slices of
            # 1,024 x 16,384 (64 MB). Same operations in the same order, so the same numbers.
            if metric == "euclidean":
                d = q_norm + r_norm[r0:r0 + REFERENCE_SLICE]
                d.sub_(Q @ block.T, alpha=2)
            else:
                d = Q @ block.T
                d.mul_(q_inv32).mul_(r_inv32[r0:r0 + REFERENCE_SLICE]).neg_().add_(1)
            d_top, i_top = _smallest(torch, d, keep)
            del d
            i_top = i_top + r0
            if best_d is not None:
                every = torch.cat([best_i, i_top], 1)
                d_top, order = _smallest(torch, torch.cat([best_d, d_top], 1), keep, every)
                i_top = torch.gather(every, 1, order)
            best_d, best_i = d_top, i_top
        candidates = best_i.cpu().numpy()
        for row, cand in enumerate(candidates):
            if own is not None and own[start + row] >= 0:
                cand = cand[cand != own[start + row]]
            vectors = ref[cand].astype(np.float64)
            if metric == "euclidean":
                exact = np.sqrt(((vectors - queries[row]) ** 2).sum(1))
            else:
                exact = np.maximum(1.0 - (vectors @ queries[row]) * r_inv[cand] * q_inv[row], 0.0)
            order = np.lexsort((cand, exact))[:k]  # by distance, ties by reference order
            index[start + row, :len(order)] = cand[order]
            distance[start + row, :len(order)] = exact[order]
    return index, distance


def _smallest(torch, d, keep: int, ids=None):
    """The columns of the `keep` smallest values of each row of `d` (the values, and the column
    positions), ties at the cut to the earlier reference: `ids` are the references' indices
    (d's shape; None: the columns are in reference order). torch.topk picks among equal values
    as it likes: a reference holding one vector 30 times (one sequence under 30 accessions,
    embedded once) gave a query the 17th to 19th of them, and others with other slice sizes,
    where the earliest are meant. Only rows with a tie at their cut are sorted; the order inside
    the set is left to the exact pass, which ranks by distance and then by reference."""
    take = min(keep, d.shape[1])
    if take == d.shape[1]:
        return d, torch.arange(take, device=d.device).expand(d.shape[0], take)
    # (one more than kept: a tie across the cut is the next value equal to the last kept)
    d_top, i_top = torch.topk(d, take + 1, dim=1, largest=False)
    tied = d_top[:, take] == d_top[:, take - 1]
    d_top, i_top = d_top[:, :take], i_top[:, :take]
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        values = d[rows]
        by_reference = (torch.sort(ids[rows], dim=1, stable=True).indices if ids is not None else
                        torch.arange(d.shape[1], device=d.device).expand(len(rows), -1))
        order = torch.sort(torch.gather(values, 1, by_reference), dim=1, stable=True).indices[:, :take]
        columns = torch.gather(by_reference, 1, order)
        d_top[rows], i_top[rows] = torch.gather(values, 1, columns), columns
    return d_top, i_top


def _reference_labels(labels, label_format: str, ref_ids: list[str], reference) -> tuple[list[str], dict, dict]:
    """(columns, id -> {column: label}, column -> labels meaning unknown) of a per-protein label file
    (its records matched to the `reference` proteins by id, else by sequence, as fit matches them)."""
    columns, by_id, unknown, first = protein_labels(labels, label_format, "knn transfers a label per protein",
                                                    embeddings=[reference])
    unlabelled = sum(1 for i in ref_ids if i not in by_id)
    if unlabelled == len(ref_ids):
        raise InputError(f"labels none of the reference's {len(ref_ids):,} proteins (ids such as "
                         f"{ref_ids[0]!r}; the file's: {first or 'none'!r})", path=display_name(labels))
    if unlabelled:
        console.info(f"{display_name(labels)}: {unlabelled:,} of the reference's {len(ref_ids):,} proteins have no "
                     "label (an empty column where one is a neighbour)")
    return columns, by_id, unknown


def protein_labels(labels, label_format: str, use: str, *, all_columns: bool = False,
                   embeddings=()) -> tuple[list[str], dict, dict, str | None]:
    """(columns, id -> {column: label}, column -> labels meaning unknown, the first id) of a
    per-protein label file; a file of per-residue labels refused (`use` says why).
    `all_columns`: a table's every column by its header's name (read_labels). `embeddings`: the
    files whose proteins the labels are for: a record whose id none of them holds gives its labels
    to the protein of its sequence there (heads.data.embedding_ids, fit's matching: a FLIP CSV,
    keyed by sequence, beside embeddings made under accession ids)."""
    return labels_by_protein(protein_label_set(labels, label_format, use, all_columns=all_columns), labels,
                             embeddings)


def protein_label_set(labels, label_format: str, use: str, *, all_columns: bool = False):
    """The per-protein label file `labels` read (read_labels); one of per-residue labels refused."""
    from protrans_cli.heads.labels import holds_residue_labels, holds_sequences, read_labels

    label_set = read_labels(labels, label_format, all_columns=all_columns)
    if holds_sequences(label_set):  # ("holds per-residue labels (flip)" of a FASTA of sequences)
        raise InputError(f"holds sequences, not labels; {use} (a DeepLoc FASTA, an id,label table, FLIP CSV); if "
                         "the file holds sequences, give it to embed", path=str(labels))
    # (biotrainer's residue_to_class files too: a TARGET of one letter per residue, or a MASK=)
    if label_set.format in ("netsurfp", "pisces") or holds_residue_labels(label_set):
        raise InputError(f"holds per-residue labels ({label_set.format}); {use} (a DeepLoc FASTA, an id,label "
                         "table, FLIP CSV)", path=str(labels))
    return label_set


def labels_by_protein(label_set, labels, embeddings=()) -> tuple[list[str], dict, dict, str | None]:
    """protein_labels' answer for a label set read (`labels`: its path, for messages)."""
    from protrans_cli.heads.data import embedding_ids

    columns: list[str] = []
    by_id: dict[str, dict] = {}
    for record in label_set.records:
        by_id[record.id] = dict(record.labels)
        for name in record.labels:
            if name not in columns:
                columns.append(name)
    renamed, found = embedding_ids(label_set, embeddings) if embeddings else ([], [])
    for record_id, ident in renamed + found:
        by_id[ident] = by_id[record_id]
    if found:
        console.info(f"{display_name(labels)}: {console.counted(len(found), 'protein')} labelled by sequence "
                     "checksum (the record's id is not the embedding's)")
    first = label_set.records[0].id if label_set.records else None
    return columns, by_id, UNKNOWN.get(label_set.format, {}), first


def _vote(labels: list[str | None]) -> str | None:
    """The label most of the neighbours (in rank order) carry; a tie goes to the nearer."""
    counts: dict[str, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None
    top = max(counts.values())
    return next(label for label in labels if label is not None and counts[label] == top)


def knn(query, reference, output="-", *, k: int = 1, metric: str = "euclidean", layer: int = -1,
        exclude_self: bool = False, labels=None, label_format: str = "auto", score=None,
        allow_model_mismatch: bool = False, threads: int | None = None, n_bootstrap: int = 1000,
        fasta=None, model: str | None = None, device: str = "auto", long_policy: str | None = None,
        max_length: int | None = None, chunk_overlap: int | None = None, invalid_policy: str | None = None,
        chains: str | None = None, linker_length: int | None = None, ids=None) -> Transfer:
    """Write the k nearest reference proteins of every query as TSV (query, rank, neighbour,
    distance, and the neighbour's label columns with `labels`); with `score` (the queries'
    labels) score the labels transferred (the vote of the k neighbours) per column.

    `fasta` (with `query` None): query sequences, embedded first (into a temporary file) with
    the reference's model (`model` replaces it), layer and long-protein policy
    (reference_embed_options); rows follow the FASTA's order. `chains`, `linker_length`:
    complexes among the sequences, as embed's (default: refused). `ids` (with `query`): a FASTA
    file (whose sequences must be the embedded ones) or one id a line ('-': stdin), as export
    reads it: only those queries are searched, rows in its order."""
    from protrans_cli.heads.fit import check_resamples
    from protrans_cli.heads.metrics import summary_line
    from protrans_cli.heads.predict import check_fasta_values
    from protrans_cli.io.files import atomic_output, input_named_by, output_directory, same_file

    if (query is None) == (fasta is None):
        raise UsageError(option("give the queries' embeddings (QUERY.h5) or their sequences (--fasta), one of them",
                                "give the queries' embeddings (query) or their sequences (fasta), one of them"))
    # (a list of files was "stat: path should be string ... not list", a TypeError from deep inside)
    if fasta is not None and ids is not None:
        raise UsageError(option("--ids picks proteins of QUERY.h5; with --fasta, the FASTA holds the queries (give "
                                "those alone)", "ids picks proteins of query; with fasta, the FASTA holds the queries "
                                "(give those alone)"))
    for value, name in ((query, "query"), (reference, "reference"), (fasta, "fasta"), (labels, "labels"),
                        (score, "score"), (ids, "ids")):
        if value is not None:
            expect_path(value, f"knn: {name}", " (one file)")
    if output is not None:
        expect_path(output, "knn: output", " (a file, or '-' for stdout)")
    if fasta is None:
        for value, flag, keyword in ((model, "-m", "model"), (long_policy, "--long-policy", "long_policy"),
                                     (max_length, "--max-length", "max_length"),
                                     (chunk_overlap, "--chunk-overlap", "chunk_overlap"),
                                     (chains, "--chains", "chains"), (linker_length, "--linker-length", "linker_length"),
                                     (invalid_policy, "--invalid-policy", "invalid_policy")):
            if value is not None:
                raise UsageError(option(f"{flag} goes with --fasta (QUERY.h5 was embedded already)",
                                        f"{keyword} goes with fasta (query was embedded already)"))
    if score is not None and labels is None:
        raise UsageError(f"{option('--score', 'score')} compares the labels transferred from the reference: give the "
                         f"reference's {option('--labels', 'labels')}")
    # `-o query.h5` replaced the embeddings with the TSV, as predict and labels refuse
    if source := input_named_by(output, [p for p in (query, fasta, reference, labels, score, ids) if p is not None]):
        raise UsageError(f"{output} is also an input: writing it would replace {source} (choose another name)")
    if output is not None and str(output) != "-":
        output_directory(output)  # (as predict: before the search, not when its result is written)
        warn_tab_separated(output, "knn")
    check_resamples(n_bootstrap, option("--bootstrap", "n_bootstrap"))
    _check_search(k, metric, layer)
    # (before the reference is read: a missing one was named first, exit 1, then -j -1 refused)
    check_fasta_values(max_length, chunk_overlap, threads)
    k, layer = int(k), int(layer)
    if fasta is not None:
        expect_path(fasta, "fasta")
        # (every refusal before the sequences are embedded: the reference's, the options', the labels')
        options = reference_embed_options(reference, layer=layer, model=model, device=device, threads=threads,
                                          long_policy=long_policy, max_length=max_length,
                                          chunk_overlap=chunk_overlap, invalid_policy=invalid_policy or "error",
                                          chains=chains or "error", linker_length=linker_length,
                                          allow_model_mismatch=allow_model_mismatch)
        ref_ids, ref, r_attrs = _reference_vectors(reference, layer)
        columns, by_id, unknown = ([], {}, {}) if labels is None else _reference_labels(labels, label_format,
                                                                                        ref_ids, reference)
        q_ids, q, q_attrs, truth, q_sums = _embedded_queries(fasta, reference, output, options, score,
                                                             label_format, model_given=model is not None)
        # (-m: the same weights elsewhere, as in predict --fasta; a warning where the names differ)
        _check_pair(f"the embeddings of {_shown(fasta)}", reference, q, ref, q_attrs, r_attrs, metric,
                    allow_model_mismatch or model is not None)
    else:
        q_ids, q, ref_ids, ref = _prepared(query, reference, k, metric, layer, allow_model_mismatch,
                                           _id_list(ids))
        columns, by_id, unknown = ([], {}, {}) if labels is None else _reference_labels(labels, label_format,
                                                                                        ref_ids, reference)
        truth = None if score is None else _query_labels(score, _score_label_set(score, label_format), q_ids, query)
        q_sums = None if score is None else _checksums_by_id(query)
    # (asked once: the note here, and --score's warning of queries that are reference proteins too)
    own_reference = query is not None and not exclude_self and same_file(query, reference)
    if own_reference:
        console.info(f"{query} is its own reference: each protein's first neighbour is itself, at distance 0 "
                     "(--exclude-self leaves it out)")
    result = _neighbours(q_ids, q, ref_ids, ref, k, metric, exclude_self, threads, device)
    _note_short_rows(result, k, exclude_self)
    if labels is not None:
        # (stdin named as every reader names it: "from -" was the one '-')
        console.info(f"transferring {', '.join(columns)} from {display_name(labels)}")
    transfer = Transfer(result, columns)
    with atomic_output(output, follow_link=True) as stream:
        stream.write(("\t".join(["query", "rank", "neighbour", "distance", *columns]) + "\n").encode())
        for qi, ident in enumerate(result.query_ids):
            lines = []
            for rank in range(result.index.shape[1]):
                ri = int(result.index[qi, rank])
                if ri < 0:
                    break
                neighbour = result.reference_ids[ri]
                found = by_id.get(neighbour, {})
                lines.append("\t".join([_cell(ident), str(rank + 1), _cell(neighbour),
                                        f"{result.distance[qi, rank]:.6g}",
                                        *(_cell(found.get(c, "")) for c in columns)]))
            stream.write(("\n".join(lines) + "\n").encode() if lines else b"")
    if truth is not None:
        truth, unknown_there = truth
        if not own_reference:  # (said above)
            _warn_known_queries(score, result, {i for i in result.query_ids if i in truth}, q_sums, reference)
        for column in columns:
            # (an empty label, a blank table cell as pandas writes a missing value, is no label, as
            # for fit: it was transferred as a class "" and counted a miss: 0.250 for 0.334 on DeepLoc)
            skip = {""} | unknown.get(column, set()) | unknown_there.get(column, set())
            # Where some reference proteins have no label of this column (DeepLoc's membrane `U`),
            # the label comes from the nearest ones that have one.
            known = np.array([by_id.get(r, {}).get(column) not in (None, *skip) for r in ref_ids])
            if not known.any():  # (setHARD's membrane: all `U`; an empty search was a traceback)
                transfer.scores[column] = _nothing_scored(column)
                console.info(summary_line("transfer", column, transfer.scores[column])
                             + " (no reference protein has a known label)")
                continue
            found = result if known.all() else _neighbours(
                q_ids, q, [r for r, ok in zip(ref_ids, known) if ok], ref[known], k, metric, exclude_self, threads,
                device)
            transfer.scores[column] = _score_column(found, column, by_id, skip, truth, n_bootstrap)
            named = (column, _SAME_COLUMN.get(column, column))
            why = "" if transfer.scores[column]["n"] or any(
                c in own for own in truth.values() for c in named) else f" ({score} gives no query a {column} label)"
            console.info(summary_line("transfer", column, transfer.scores[column]) + why)
            _warn_numbers(score, column, truth)
    console.info(f"knn: {console.counted(len(result.query_ids), 'query protein')} against "
                 f"{console.counted(len(result.reference_ids), 'reference protein')} ({metric}, k {k})"
                 + (f" into {output}" if str(output) != "-" else ""))
    return transfer


def _checksums_by_id(path) -> dict[str, str]:
    with EmbeddingsReader(path) as reader:
        return reader.checksums_by_id(PER_PROTEIN)


def _note_short_rows(result: Neighbours, k: int, exclude_self: bool) -> None:
    """A note where the reference holds fewer than -k proteins for some queries: their rows
    were fewer than k, without a word."""
    found = (result.index >= 0).sum(axis=1) if len(result.query_ids) else np.zeros(0, dtype=int)
    short = int((found < k).sum())
    if short:
        besides = " (besides the query itself, --exclude-self)" if exclude_self else ""
        low, high = int(found.min()), int(found[found < k].max())
        many = f"{low:,}" if low == high else f"{low:,} to {high:,}"
        console.info(f"-k {k}: the reference holds {console.counted(len(result.reference_ids), 'protein')}, so "
                     f"{short:,} of the {len(found):,} queries have {many} neighbours{besides}")


def _warn_known_queries(score, result: Neighbours, scored: set, q_sums: dict, reference) -> None:
    """One warning counting the scored queries among whose neighbours is the query itself: the
    same id (as long as --exclude-self does not leave it out) or its sequence under another id, as
    fit warns of test proteins in train. Their transferred labels are a lookup of their own, not
    a transfer to a new protein. (Only the neighbours found are looked up: an identical sequence
    is at distance 0, and a reference protein no query reaches changes no score.)"""
    same_id, same_sequence = [], []
    checksums: dict[str, str | None] = {}
    with EmbeddingsReader(reference) as reader:
        def checksum(ident: str) -> str | None:
            if ident not in checksums:
                key = reader.key_for(ident, PER_PROTEIN)
                checksums[ident] = None if key is None else reader.checksum_of(key, PER_PROTEIN)
            return checksums[ident]

        for qi, ident in enumerate(result.query_ids):
            if ident not in scored:
                continue
            neighbours = [result.reference_ids[int(i)] for i in result.index[qi] if i >= 0]
            if ident in neighbours:
                same_id.append(ident)
            elif q_sums.get(ident) and any(checksum(n) == q_sums[ident] for n in neighbours):
                same_sequence.append(ident)
    both = same_id + same_sequence
    if not both:
        return
    found = ", ".join(([f"{len(same_id)} by id"] if same_id else [])
                      + ([f"{len(same_sequence)} by an identical sequence"] if same_sequence else []))
    console.warn(f"{score}: {len(both)} of the {len(scored)} scored queries have themselves among their "
                 f"neighbours in the reference ({_shown(reference)}) ({found}: {', '.join(both[:3])}"
                 f"{', ...' if len(both) > 3 else ''}); their transferred labels are not an independent test"
                 + (" (--exclude-self leaves a query's own id out)" if same_id else ""))


def _warn_numbers(score, column: str, truth: dict) -> None:
    """A column of many distinct non-integer numbers (a FLIP CSV's fitness, a melting point) is
    scored as classes, a transferred number right only where it equals the query's exactly: its
    accuracy of 0 was given without a word (fit's protein task warns of such labels alike)."""
    from protrans_cli.heads.tasks import numbers_as_classes

    numbers = {v for own in truth.values()
               if (v := own.get(column, own.get(_SAME_COLUMN.get(column, column)))) not in (None, "")}
    if numbers_as_classes(numbers):
        console.warn(f"{score}: its {column} column holds {len(numbers):,} distinct numbers, each scored as a "
                     "class of its own: a neighbour's number counts only where it equals the query's exactly (knn "
                     "transfers classes; protrans fit value regresses numbers)")


def _shown(fasta) -> str:
    from protrans_cli.io.files import display_name

    return display_name(fasta)


def _embedded_queries(fasta, reference, output, options, score, label_format: str, model_given: bool = False):
    """(ids, vectors, file attributes, the --score labels or None, id -> sequence checksum with --score)
    of the FASTA's sequences embedded with `options`, in the FASTA's order, through a temporary file
    removed before returning."""
    import os

    from protrans_cli.heads.predict import embed_fasta, fasta_ids
    from protrans_cli.io.files import special_output, temporary_folder

    shown = _shown(fasta)
    # Next to the output (the embeddings of a proteome can be large), else in $TMPDIR (not /dev
    # for `-o /dev/stdout`), as predict --fasta does.
    where = (os.path.dirname(os.path.abspath(output)) if output and str(output) != "-"
             and special_output(output) is None else None)
    with temporary_folder(where, ".protrans-knn-") as tmp:
        readable, order = fasta_ids(fasta, tmp)
        # the queries' labels before the sequences are embedded: a bad --score file fails at once
        # (one keyed by sequence, a FLIP CSV, is matched to the queries once they are embedded)
        label_set = None if score is None else _score_label_set(score, label_format)
        truth = None
        if label_set is not None and not any(r.sequence for r in label_set.records):
            truth = _query_labels(score, label_set, order)  # (ids alone: matched once, here)
        elif label_set is not None and not _labels_any_query(label_set, readable, order):
            # (records with sequences, a DeepLoc FASTA or a FLIP CSV: matched by sequence only after
            # the embedding, so a wrong --score file was found after a proteome's embedding)
            raise InputError(f"labels none of the {len(order):,} queries, by id or by sequence (ids such as "
                             f"{order[0]!r})" if order else "the query FASTA holds no proteins", path=str(score))
        embeddings = embed_fasta(readable, order, tmp, options, fasta, f"to search {_shown(reference)}",
                                 recorded_in=None if model_given else reference)
        # (the temporary file is gone when the command ends: messages name the FASTA)
        with console.naming(embeddings, f"the embeddings of {shown}"):
            with EmbeddingsReader(embeddings) as reader:
                failed = reader.failed()
            ids, vectors, attrs = _vectors(embeddings, -1, "query")  # (the one layer embedded)
            if label_set is not None and truth is None:  # (by sequence too: the embeddings' checksums)
                truth = _query_labels(score, label_set, order, embeddings)
            sums = None if score is None else _checksums_by_id(embeddings)  # (scored queries in the reference)
    if failed:  # (--invalid-policy skip, --long-policy skip)
        from protrans_cli.heads.labels import some_failed

        # with why, as embed says it (the file is a temporary one: the ids alone left the reasons
        # nowhere to read)
        console.warn(f"{shown}: {len(failed)} protein(s) could not be embedded and have no neighbours: "
                     f"{some_failed(sorted(failed.items()))}")
    rank = {ident: i for i, ident in enumerate(order)}
    permutation = sorted(range(len(ids)), key=lambda i: rank.get(ids[i], len(rank)))  # stable: unknown ids last
    return [ids[i] for i in permutation], vectors[permutation], attrs, truth, sums


def _labels_any_query(label_set, fasta, order: list[str]) -> bool:
    """Whether a record of `label_set` names a query of `fasta` by id, or by its sequence (the
    checksums embed and fit compare), read before anything is embedded."""
    from protrans_cli.heads.data import label_checksums
    from protrans_cli.io.fasta import parse_fasta
    from protrans_cli.io.files import open_input

    ids = set(order)
    if any(r.id in ids for r in label_set.records):
        return True
    sums = {c for r in label_set.records if r.sequence for c in label_checksums(r.sequence)}
    # (read as fasta_ids reads it: a header with a NUL byte is embed's to refuse or skip; read_fasta
    # failed on it under --invalid-policy skip, naming the temporary copy of stdin)
    with open_input(fasta) as stream:
        return any(c in sums for record in parse_fasta(stream, display_name(fasta), nul_headers=True)
                   for c in label_checksums(record.sequence))


def warn_tab_separated(output, command: str) -> None:
    """`-o hits.csv` got tab-separated text without a word (read.csv and Excel took each row for
    one field)."""
    if named_delimiter(output) == ",":
        console.warn(f"{output}: {command} writes tab-separated text (TSV), whatever the file's extension")


def _cell(text: str) -> str:
    """A TSV field: a tab or line break inside (a header attribute, a label) would split the row,
    and one that starts with a quote is quoted as CSV quotes it, which pandas', R's and Python's
    csv TSV readers undo (read as it stands, their quote handling ate it up to the next quote)."""
    return tsv_quoted(str(text).replace("\t", " ").replace("\n", " ").replace("\r", " "))


# DeepLoc's columns scored under the names fit gives them (the same number as "accuracy")
_METRIC_NAMES = {"loc": "Q10", "membrane": "Q2"}
# A location is `loc` in a DeepLoc FASTA and `label` in an id,label table (the bio_embeddings
# DeepLoc annotations): fit's loc task reads either, so a reference labelled by one is scored
# against queries labelled by the other (it was "nothing to evaluate").
_SAME_COLUMN = {"loc": "label", "label": "loc"}


def _scored(column: str, value: str | None) -> str | None:
    """A label as Q10 counts it: DeepLoc's dual `Cytoplasm-Nucleus` is Cytoplasm, as fit's loc task
    counts it by default (--dual first) and the bio_embeddings annotations label it. Scored as an
    11th class, a Cytoplasm query whose neighbour was one of those 23 proteins was a miss."""
    if column == "loc" and value is not None:
        from protrans_cli.heads.tasks import DUAL_LABELS

        return DUAL_LABELS.get(value, value)
    return value


def _nothing_scored(column: str) -> dict:
    """The metrics of a column with no query to score (heads.metrics.evaluate's form)."""
    return {"metric": _METRIC_NAMES.get(column, "accuracy"), "n": 0, "n_proteins": 0, "accuracy": math.nan}


def _score_label_set(score, label_format: str):
    """The queries' label file read: per-protein labels, as --labels takes (a FASTA of sequences or
    per-residue labels, read as FLIP's, was scored against the neighbours' locations: Q10 0.0000
    without a word)."""
    return protein_label_set(score, label_format, "knn --score compares each query's own label with the one "
                             "transferred to it")


def _query_labels(score, label_set, q_ids: list[str], queries=None) -> tuple[dict, dict]:
    """(id -> labels, column -> labels meaning unknown) of the queries' label set (`score`'s),
    matched to the proteins of the file `queries` by id, else by sequence (as --labels)."""
    _, truth, unknown, _ = labels_by_protein(label_set, score, [queries] if queries is not None else [])
    missing = sum(1 for i in q_ids if i not in truth)
    if missing == len(q_ids):
        raise InputError(f"labels none of the {len(q_ids):,} queries (ids such as {q_ids[0]!r})" if q_ids
                         else "the query file holds no proteins", path=display_name(score))
    if missing:
        console.info(f"{display_name(score)}: {missing:,} of the {len(q_ids):,} queries have no label and are not "
                     "scored")
    return truth, unknown


def _score_column(result: Neighbours, column: str, by_id: dict, skip: set, truth: dict, n_bootstrap: int) -> dict:
    from protrans_cli.heads.metrics import evaluate

    true_labels, predicted = [], []
    # In order of the query ids, as fit's metrics resample proteins: the same queries embedded from
    # a FASTA (its order) or read from a file (its keys' order) get one CI (they got two).
    for qi in sorted(range(len(result.query_ids)), key=result.query_ids.__getitem__):
        ident = result.query_ids[qi]
        own = truth.get(ident, {})
        value = own.get(column, own.get(_SAME_COLUMN.get(column, column)))
        if value is None or value in skip:
            continue
        # A location on either side (a reference table's `label` against a DeepLoc FASTA's `loc`):
        # the dual label counts as Cytoplasm on both (a dual query was an 11th class, a miss).
        counted_as = "loc" if column == "loc" or (column not in own and _SAME_COLUMN.get(column) == "loc") \
            else column
        votes = [_scored(counted_as, by_id.get(result.reference_ids[int(ri)], {}).get(column))
                 for ri in result.index[qi] if ri >= 0]
        predicted.append(_vote(votes))
        true_labels.append(_scored(counted_as, value))
    if not true_labels:
        return _nothing_scored(column)
    classes = sorted(set(true_labels) | {p for p in predicted if p is not None})
    code = {c: i for i, c in enumerate(classes)}
    # (no neighbour at all: counted wrong, as a class of its own)
    return evaluate([np.array([code[t]]) for t in true_labels],
                    [np.array([code[p] if p is not None else len(classes)]) for p in predicted],
                    classes + ["(none)"], metric=_METRIC_NAMES.get(column, "accuracy"), n_boot=n_bootstrap)

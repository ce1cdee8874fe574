"""Fine-tune a protein language model with LoRA together with a prediction head (Schmirler et al. 2024).

    from protrans_cli.heads.finetune import FinetuneConfig, finetune
    finetune(FinetuneConfig(task="ss3", model="prot_t5_xl_half"), "Train_HHblits.csv.gz", "ft/ss3",
             tests=["CB513_HHblits.csv"])

Reads top to bottom in run order: labels and sequences -> validation (--valid, the file's declared
validation records, else a --valid-fraction hold-out, as fit) -> the model as embed loads it, LoRA
adapters on its attention projections (heads/lora.py; base weights frozen) and fit's head
(heads/model.py build_head) on the chosen layer's residue rows, which embed's family code
(tokenisation, special tokens, one row per residue) selects -> AdamW epochs with fit's early
stopping rule -> OUT/model (the adapters merged into the weights, an ordinary model directory),
OUT/head (a head directory in fit's format whose embedding model is OUT/model, so that
`protrans predict OUT/head --fasta x.fa` works), OUT/finetune.json; the test sets are embedded with
the saved OUT/model and scored by fit's metrics code. Written to a temporary folder renamed into
place at the end; OUT.partial/state.pt after every epoch lets --resume continue. Complexes (chains
joined by ':') with --chains linker|separate, read as embed --chains reads them (FineTuned).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from protrans_cli import console
from protrans_cli._version import __version__
from protrans_cli.choices import DEFAULT_LINKER_LENGTH
from protrans_cli.errors import (TORCH_SEEDS, InputError, RuntimeFailure, UsageError, force_option, given, located,
                                 option, resume_option, same_settings_with_resume, seed_in_range)
from protrans_cli.embed import chain_break, chain_lengths, model_text, residue_count
from protrans_cli.heads.data import Batch, Matched, ResidueData, _label_chains, has_label
from protrans_cli.heads.fit import (_MAX_SEED, _changed, _class_weights, _fork_rng, _identity, _jsonable, _lock_head,
                                    _loss, _metric_names, _only, _outputs_with_labels, _real_paths, _unique_name,
                                    _warn_overlap, check_resamples, checked_state_bytes, evaluate_data,
                                    evaluation_records, held_out_positions, load_checked_state, no_training_records,
                                    note_dual_labels, partial_path, piped_files, refuse_piped_mask, refuse_piped_resume,
                                    refuse_unused_mask_columns, warn_unused_fraction, write_metrics)
from protrans_cli.heads.labels import (TEST, TRAIN, VALID, mask_column_names, name_of_test_set, read_labels,
                                      read_sequences, refuse_protein_labels, refuse_residue_labels,
                                      unmasked_flip_warning)
from protrans_cli.heads.tasks import (DEFAULT_KERNELS, IGNORE, Task, architecture_for, get_task, input_kind,
                                     resolve_mask_columns)
from protrans_cli.io.files import disk_full
from protrans_cli.io.h5 import PER_RESIDUE

STATE = "state.pt"


@dataclass
class FinetuneConfig:
    task: str = "ss3"
    model: str = ""  # anything `embed -m` loads
    lora_rank: int = 4  # Schmirler et al. 2024
    lora_alpha: float = 8.0  # scaling alpha / rank = 2
    lora_dropout: float = 0.0
    lr: float = 3e-4  # Schmirler et al. 2024 for LoRA
    weight_decay: float = 0.01  # AdamW's default
    max_epochs: int = 10
    patience: int = 3  # epochs improving neither validation accuracy nor loss (fit's rule)
    max_residues: int = 4096  # padded residues per batch (the model's activations grow with it)
    accumulate: int = 1  # batches per optimizer step
    activation_checkpointing: bool = False  # recompute each block in the backward pass (train's option)
    seed: int = 0
    valid_fraction: float = 0.1
    architecture: str | None = None  # None: the CNN per residue, the FNN per protein
    hidden: int = 32
    kernel: int | None = None
    dropout: float = 0.25
    dual: str = "first"
    layer: int = -1
    n_bootstrap: int = 1000
    label_format: str = "auto"
    mask_path: str | None = None  # FLIP mask FASTA (fit's --mask)
    mask_columns: tuple[str, ...] = ("disorder",)  # NetSurfP columns whose 1.0 marks evaluated residues
    class_weights: bool = False  # weight the loss by inverse class frequency in train (fit's)
    chains: str = "error"  # a complex (chains joined by ':'): refused, or read as embed --chains reads it
    linker_length: int = DEFAULT_LINKER_LENGTH  # glycines between chains under chains='linker'
    device: str = "auto"
    threads: int | None = None
    resume: bool = False
    force: bool = False

    def check(self) -> None:
        # (n_bootstrap by check_resamples alone: this loop named it "--n-bootstrap", a flag finetune has not)
        for name in ("lora_rank", "max_epochs", "patience", "max_residues", "accumulate", "hidden"):
            if getattr(self, name) < 1:
                raise UsageError(f"{_flag(name)} must be at least 1, got {getattr(self, name)}")
        # (as fit's and knn's: `--bootstrap 1` reported the test Q3 0.3050 with the "95% CI" 0.3379-0.3379)
        check_resamples(self.n_bootstrap, option("--bootstrap", "n_bootstrap"))
        for name, ok, text in (("lr", lambda v: v > 0, "positive"), ("lora_alpha", lambda v: v > 0, "positive"),
                               ("weight_decay", lambda v: v >= 0, "0 or more"),
                               ("valid_fraction", lambda v: 0 < v < 1, "between 0 and 1"),
                               ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
                               ("lora_dropout", lambda v: 0 <= v < 1, "in [0, 1)")):
            value = getattr(self, name)
            if not (math.isfinite(value) and ok(value)):
                raise UsageError(f"{_flag(name)} must be {text}, got {value}")
        from types import SimpleNamespace

        from protrans_cli.embed import check_chains

        check_chains(SimpleNamespace(chains=self.chains, linker_length=self.linker_length, long_policy="error"))
        if self.kernel is not None and (self.kernel < 1 or self.kernel % 2 != 1):
            raise UsageError(f"{_flag('kernel')} must be odd (every residue keeps its position), got {self.kernel}")
        # (as fit's: numpy's generator of the hold-out and torch's seed take 0 .. 2**64 - 1; -1 was a
        # ValueError traceback once the labels had been read)
        seed_in_range(self.seed, _MAX_SEED, TORCH_SEEDS)
        if self.threads is not None:  # (-j -1 was refused only once the model had been loaded)
            from protrans_cli.threads import check_threads

            check_threads(self.threads)
        if not self.model:
            raise UsageError(f"finetune needs a model ({option('-m', 'model=')}): a model directory, a short name or "
                             "a hub id")
        from protrans_cli.embedders import is_weightless

        if is_weightless(self.model):
            raise UsageError(f"{given('-m', 'model', self.model)} has no weights to fine-tune: use `protrans fit` on "
                             "its embeddings")
        if str(self.mask_path) == "-":  # (read for each label file, as fit's)
            raise UsageError(f"{option('--mask', 'mask_path')} cannot be stdin ('-'): it is read for each label file; "
                             "give it as a file")


def _flag(name: str) -> str:
    """How a message names FinetuneConfig field `name`: its flag at the command line (the field's
    name, hyphenated), the field to a library call (`option`)."""
    return option(f"--{name.replace('_', '-')}", name)


@dataclass
class FinetuneResult:
    out_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)


# --- sequences with their targets ----------------------------------------------------------

class SequenceData:
    """Labelled proteins as sequences: `items` (fit's Matched, key = id), `sequences`, and batches
    by padded residue budget (fit's ResidueData.plan) whose `x` is the list of sequences."""

    def __init__(self, items: list[Matched], sequences: list[str], per_residue: bool, chains: str = "error",
                 linker_length: int = DEFAULT_LINKER_LENGTH):
        from protrans_cli.embed import model_length

        self.items, self.sequences, self.per_residue = items, sequences, per_residue
        self.chains, self.linker_length = chains, linker_length
        # (the residues the model reads at once, which the batches' budget counts: a complex's
        # chains with their linkers, or its longest chain under separate)
        self.lengths = np.array([model_length(s, chains, linker_length) for s in sequences], dtype=np.int64)

    def subset(self, positions) -> "SequenceData":
        positions = np.sort(np.asarray(positions, dtype=np.int64))
        return SequenceData([self.items[i] for i in positions], [self.sequences[i] for i in positions],
                            self.per_residue, self.chains, self.linker_length)

    @property
    def targets(self) -> dict:
        """{output: (N,) targets} of a per-protein set (Task.with_scale_from reads them)."""
        from protrans_cli.heads.data import _target_array

        return {name: _target_array([m.targets[name] for m in self.items]) for name in self.items[0].targets}

    def batches(self, max_residues: int = 4096, shuffle: bool = False, rng=None, **_):
        for index in ResidueData.plan(self, max_residues, shuffle, rng):
            seqs = [self.sequences[i] for i in index]
            longest = max(residue_count(s) for s in seqs)  # (a complex's rows: its chains' residues)
            if self.per_residue:
                targets = {name: np.full((len(index), longest), IGNORE, dtype=np.int64) for name in self.items[0].targets}
                for row, i in enumerate(index):
                    for name, codes in self.items[i].targets.items():
                        targets[name][row, :len(codes)] = codes
            else:
                targets = {name: values[index] for name, values in self.targets.items()}
            mask = torch.zeros(len(index), longest, dtype=torch.bool)  # (B, L)
            for row, s in enumerate(seqs):
                mask[row, :residue_count(s)] = True
            yield _SequenceBatch(seqs, mask, {k: torch.from_numpy(v) for k, v in targets.items()}, index)


class _SequenceBatch(Batch):
    def to(self, device) -> "_SequenceBatch":
        if str(device) == "cpu":
            return self
        return _SequenceBatch(self.x, self.mask.to(device), {k: v.to(device) for k, v in self.targets.items()},
                              self.index)


def read_sequence_data(path, task: Task, *, fasta=None, label_format: str = "auto", config=None,
                       evaluation: bool = False, mask_elsewhere: bool = False, masked: list | None = None,
                       sequences: dict | None = None, formats: list | None = None, own_splits: bool = False,
                       used_split: str | None = None):
    """The LabelSet of a label file whose records all have a sequence (from the file, or `fasta`
    by id). `config` (a FinetuneConfig): its --mask and --mask-column, applied as fit applies them
    (`evaluation`, `mask_elsewhere`: read_labels' mask_optional and mask_elsewhere); `masked`
    collects whether the FLIP mask applied to the file; `sequences`: `fasta`'s, read already.
    `own_splits` (the training file): its validation and test records need a sequence only where
    they are used, as the validation or test set (_own_split refuses them, naming them as such);
    with --valid or --test given they are never read. `used_split` (an evaluation file: VALID for
    --valid, TEST for --test): a file that declares several splits is used for that split's records
    alone (fit's evaluation_records), and only they need a sequence."""
    label_set = read_labels(path, label_format, mask_path=getattr(config, "mask_path", None),
                            mask_columns=getattr(config, "mask_columns", ("disorder",)), mask_optional=evaluation,
                            mask_elsewhere=mask_elsewhere)
    if masked is not None:
        masked.append(label_set.format == "flip" and any(r.mask is not None for r in label_set.records))
    if formats is not None:  # (the label files' formats, file by file)
        formats.append(label_set.format)
    if task.kind != PER_RESIDUE:
        refuse_residue_labels(label_set, task.name)
    if warning := unmasked_flip_warning(label_set, task.output_names):
        console.warn(f"{label_set.path}: {warning}")
    for note in label_set.notes:
        console.info(f"{label_set.path}: {note}")
    note_dual_labels(label_set, task.name, task.dual)
    if sequences is None:
        sequences = read_sequences(fasta) if fasta is not None else {}
    chains = getattr(config, "chains", "error")
    splits = {r.split for r in label_set.records}
    if own_splits:  # (the training file: its own validation and test records are checked where used)
        unused = {VALID, TEST}
    elif used_split is not None and len(splits) > 1:  # (a file of one split is used whole)
        unused = splits - {used_split}
    else:
        unused = set()
    missing = []
    for position, record in enumerate(label_set.records):
        source = path  # (where its sequence comes from)
        if record.id in sequences:
            source = fasta
            if record.sequence and record.sequence.upper() != sequences[record.id].upper():
                raise InputError(f"{option(f'--fasta {fasta}', f'fasta {fasta}')} gives another sequence for this id",
                                 path=str(path), record=record.id)
            record.sequence = sequences[record.id]
        if task.kind == PER_RESIDUE:
            # (per-residue labels with ':' between a complex's chains, as predict writes its states
            # and fit reads them: the ':'s removed, the chain lengths checked against the sequence's)
            record, label_chains = _label_chains(record)
            label_set.records[position] = record
            if label_chains is not None and record.sequence and tuple(chain_lengths(record.sequence)) != label_chains:
                raise InputError(f"its labels have chains of {', '.join(map(str, label_chains))} residues (':' "
                                 f"between them), where its sequence's are of "
                                 f"{', '.join(map(str, chain_lengths(record.sequence)))}", path=str(path),
                                 record=record.id)
        if not record.sequence:
            if record.split not in unused:
                missing.append(record.id)
        elif ":" in record.sequence:
            _check_complex(record, chains, source)
    if missing:
        raise _without_sequence(missing, path, fasta)
    if task.kind == PER_RESIDUE:  # (one label a protein: "5 labels for 38 residues" said of its first record)
        refuse_protein_labels(label_set, task.name, lambda r: residue_count(r.sequence) if r.sequence else None)
    return label_set


def _without_sequence(missing: list, path, fasta) -> InputError:
    """The error for label records that neither their file nor --fasta gives a sequence."""
    where = f"neither the file nor --fasta {fasta} gives" if fasta is not None else \
        "the file gives no sequences (give them with --fasta SEQS.fa)"
    return InputError(f"{len(missing):,} record(s) without a sequence: {where} ({', '.join(missing[:3])}...)",
                      path=str(path))


def _check_complex(record, chains: str, source) -> None:
    """A sequence with ':' between a complex's chains: refused without --chains (the tokenizer read
    the ':' as a residue of its own, and the labels counted one short), an empty chain refused."""
    sequence = record.sequence
    if chains == "error":
        raise InputError(chain_break(sequence), path=str(source), record=record.id)
    if min(chain_lengths(sequence)) == 0:
        raise InputError("an empty chain in its sequence (a ':' at the start or the end, or '::')",
                         path=str(source), record=record.id)


def to_data(task: Task, records, path, *, evaluating: bool = False, chains: str = "error",
            linker_length: int = DEFAULT_LINKER_LENGTH) -> SequenceData:
    """Targets of each record (fit's Task code), records without any label left out."""
    per_residue = task.kind == PER_RESIDUE
    unlabelled = task.check_label_states(records, str(path), evaluating=evaluating) if per_residue else frozenset()
    items, seqs = [], []
    with located(path):
        for r in records:
            targets = task.residue_targets(r, unlabelled) if per_residue else task.protein_targets(r)
            if per_residue:  # (a complex's labels: its chains' residues, the ':'s not counted)
                if len(next(iter(targets.values()))) != residue_count(r.sequence):
                    raise InputError(f"{len(next(iter(targets.values())))} labels for {residue_count(r.sequence)} "
                                     "residues", path=str(path), record=r.id)
            # (fit's rule: a class index other than IGNORE, a value other than NaN; a value of
            # exactly -100 compared equal to IGNORE and its protein was left out)
            if has_label(targets):
                items.append(Matched(r.id, r.id, residue_count(r.sequence), targets))
                seqs.append(r.sequence)
    if not items:  # (fit's words: "no labelled proteins" said neither how many nor why)
        raise InputError(f"none of its {len(records)} label record(s) gives a usable label (empty or nan, every "
                         "residue masked, or a dual location under --dual skip): nothing to train on or score",
                         path=str(path))
    return SequenceData(items, seqs, per_residue, chains, linker_length)


def _check_lengths(sources, limit: int | None) -> None:
    """A protein longer than the model accepts (its position table) is refused before the first
    epoch, naming its file and record (it was a traceback from inside the model at its batch)."""
    if limit is None:
        return
    for data, path in sources:
        for item, sequence, length in zip(data.items, data.sequences, data.lengths):
            if length > limit:  # (a complex: what the model reads at once, embed's model_length)
                raise InputError(f"{length:,} residues, longer than the {limit:,} residues the model accepts "
                                 "(finetune neither truncates nor chunks: leave such proteins out)", path=str(path),
                                 record=item.id)


def _hold_out(config: FinetuneConfig, train: SequenceData, labels):
    """fit's --valid-fraction rule: the fraction of train drawn with --seed, identical sequences together."""
    total = len(train.items)
    n_valid = max(1, int(round(config.valid_fraction * total)))
    if total - n_valid < 1:
        raise InputError(f"too few training proteins ({total}) to hold out a validation set", path=str(labels))
    groups: dict = {}
    for i, s in enumerate(train.sequences):
        groups.setdefault(s.upper(), []).append(i)
    valid_idx, train_idx = held_out_positions(list(groups.values()), n_valid, config.seed)
    if not train_idx:
        raise InputError(f"the {option('--valid-fraction', 'valid_fraction')} hold-out leaves no training protein "
                         "(the proteins share a sequence)", path=str(labels))
    return train.subset(train_idx), train.subset(valid_idx), (f"{len(valid_idx):,} proteins held out of train "
                                                              f"(seed {config.seed}; {len(train_idx):,} left)")


# --- the model: encoder with adapters + head ---------------------------------------------------

def model_pieces(sequences, chains: str, linker_length: int) -> tuple[list[str], list[list[tuple[int, int, int]]]]:
    """(the texts the model reads, for each sequence its pieces (text, first row, rows) in order):
    a complex's chains joined by `linker_length` glycines, the linkers' rows not among its pieces
    (chains linker), or each chain a text of its own (separate), as embed --chains reads it."""
    texts, pieces = [], []
    for s in sequences:
        if ":" not in s:
            pieces.append([(len(texts), 0, len(s))])
            texts.append(s)
        elif chains == "separate":
            pieces.append([])
            for chain in s.split(":"):
                pieces[-1].append((len(texts), 0, len(chain)))
                texts.append(chain)
        elif chains == "linker":
            pieces.append([])
            start = 0
            for n in chain_lengths(s):
                pieces[-1].append((len(texts), start, n))
                start += n + linker_length
            texts.append(model_text(s, "linker", linker_length))
        else:  # (read_sequence_data refuses them first)
            raise ValueError(f"a complex with chains={chains!r}")
    return texts, pieces


class FineTuned(nn.Module):
    """Called like a head (`model(sequences, mask) -> {output: logits}`) on top of an encoder with
    adapters; embed's TransformerEmbedder gives the family's input conventions and residue rows.
    A complex (chains joined by ':') is read as embed --chains reads it (`chains`): its chains
    joined by `linker_length` glycines whose rows are then dropped (linker), or each chain alone
    (separate), its rows the chains' residues in chain order; a per-residue task's head reads
    each chain as a protein of its own (`per_chain`), as predict and fit give it a complex."""

    def __init__(self, embedder, head, reads_residues: bool, autocast: str | None = None, *, chains: str = "error",
                 linker_length: int = DEFAULT_LINKER_LENGTH, per_chain: bool = False):
        super().__init__()
        self.embedder = embedder  # (tokeniser, family, layer; its model is self.encoder)
        self.encoder = embedder.model
        self.head = head
        self.reads_residues = reads_residues
        self.autocast = autocast
        self.chains, self.linker_length, self.per_chain = chains, linker_length, per_chain

    def residue_rows(self, sequences):
        """(x (B, L, D) float32 with exactly one row per residue, mask (B, L) bool), embed's rows."""
        emb = self.embedder
        texts, pieces = model_pieces(sequences, self.chains, self.linker_length)
        inputs, mask = emb.family_impl.encode(emb.tokenizer, texts, emb._multiple(texts))
        device = next(self.head.parameters()).device
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        mask = mask.to(device=device, dtype=torch.bool)  # (T, S)
        ctx = (torch.autocast(device.type, dtype=getattr(torch, self.autocast)) if self.autocast
               else contextlib.nullcontext())
        with ctx:
            states = emb.family_impl.hidden_states(self.encoder, inputs, list(emb.layers))[0]  # (T, S, D)
        rows = states[mask].float()  # (sum of the texts' residues, D)
        if len(texts) != len(sequences) or any(len(p) > 1 for p in pieces):
            # a complex: its residues' rows in chain order, the linkers' left out (indexing: the
            # gradients flow back to the encoder as through the rows themselves)
            offsets = np.concatenate([[0], np.cumsum(mask.sum(dim=1).cpu().numpy())])
            keep = np.concatenate([np.arange(offsets[t] + first, offsets[t] + first + n)
                                   for parts in pieces for t, first, n in parts])
            rows = rows[torch.from_numpy(keep).to(device)]
        lengths = torch.tensor([sum(n for _, _, n in parts) for parts in pieces], device=device)  # (B,)
        longest = int(lengths.max())
        residue = torch.arange(longest, device=device)[None, :] < lengths[:, None]  # (B, L)
        x = rows.new_zeros(len(sequences), longest, rows.shape[-1])
        x[residue] = rows
        return x, residue

    def forward(self, sequences, mask=None):
        x, residue = self.residue_rows(sequences)
        if self.reads_residues and self.per_chain and any(":" in s for s in sequences):
            return self._by_chain(sequences, x, residue)
        if self.reads_residues:
            return self.head(x, residue)
        pooled = (x * residue[..., None]).sum(dim=1) / residue.sum(dim=1, keepdim=True)  # (B, D)
        return self.head(pooled, None)

    def _by_chain(self, sequences, x, residue):
        """The head on each chain of a complex as a protein of its own (a CNN slid across a chain
        break mixed the two chains' residues), its outputs put back in the complex's rows."""
        lengths = [n for s in sequences for n in chain_lengths(s)]
        longest = max(lengths)
        counts = torch.tensor(lengths, device=x.device)
        chain_mask = torch.arange(longest, device=x.device)[None, :] < counts[:, None]  # (C, Lc)
        chain_x = x.new_zeros(len(lengths), longest, x.shape[-1])
        chain_x[chain_mask] = x[residue]  # (the rows in order: sequence by sequence, chain by chain)
        out = {}
        for name, values in self.head(chain_x, chain_mask).items():  # (C, Lc, ...)
            joined = values.new_zeros((*residue.shape, *values.shape[2:]))
            joined[residue] = values[chain_mask]
            out[name] = joined
        return out


# --- the run -----------------------------------------------------------------------------------

# What finetune writes in OUT: --force replaces a folder holding these and nothing else.
OWN_ENTRIES = frozenset({"model", "head", "finetune.json"})
# Settings that do not change what is trained: a resumed run may differ in these (as fit's).
_NOT_IN_FINGERPRINT = ("threads", "force", "resume", "device", "n_bootstrap", "activation_checkpointing")


def finetune(config: FinetuneConfig, labels, out_dir, *, fasta=None, valid=None, tests=()) -> FinetuneResult:
    """Fine-tune `config.model` on `labels` (sequences from the file or `fasta`); `valid` and each
    of `tests` a label file (sequences likewise)."""
    with contextlib.ExitStack() as held:  # the lock on OUT.partial/, taken once the output is checked
        return _finetune(held, config, labels, out_dir, fasta=fasta, valid=valid, tests=tests)


def checked_output(config: FinetuneConfig, out_dir, inputs) -> Path:
    """The folder -o names (through a link, the folder it names), absolute, after the checks fit
    makes of its -o: never the current folder or one above it, never a folder holding an input,
    and an existing one only with --force (or --resume of its interrupted run) and only when it
    holds nothing but finetune's own output."""
    from protrans_cli.io.files import check_replaceable, empty_folder, input_inside, own_folder_output

    out_dir = own_folder_output(out_dir, "a fine-tuning output folder", "ft/ss3").absolute()
    if not out_dir.exists() or empty_folder(out_dir):  # (an empty one: a workflow's made for it)
        return out_dir
    if (path := input_inside(out_dir, inputs)) is not None:
        raise UsageError(f"{out_dir} holds the input {path} (choose another {option('-o', 'out_dir')})")
    if config.resume and not (partial_path(out_dir) / STATE).is_file() and (out_dir / "finetune.json").is_file():
        return out_dir  # (a finished run: finetune() compares it with this command, _finished)
    if not config.force and not (config.resume and (partial_path(out_dir) / STATE).is_file()):
        raise UsageError(f"{out_dir} exists ({force_option()} replaces it)")
    check_replaceable(out_dir, "finetune", lambda entry: entry.name in OWN_ENTRIES)
    return out_dir


def _model_dir(model: str) -> Path | None:
    """The local directory `-m` names, if it names one (else a short name or a hub id)."""
    path = Path(str(model)).expanduser()
    return path if path.is_dir() else None


def _fingerprint(config: FinetuneConfig, labels, fasta, valid, tests, stdin: str | None = None) -> dict:
    """What a resumed run must share with the interrupted one: the settings that change what is
    trained, the inputs as the files they name and those files' size and modification time
    (fit's _identity), and a local model directory's files likewise."""
    settings = {k: v for k, v in _jsonable(asdict(config)).items() if k not in _NOT_IN_FINGERPRINT}
    if settings.get("chains") == "error":  # (a state saved before finetune read complexes resumes as before)
        settings.pop("chains")
        settings.pop("linker_length", None)
    model_dir = _model_dir(config.model)
    if model_dir is not None:
        settings["model"] = os.path.realpath(model_dir)
        settings["model_files"] = {p.name: _identity(p) for p in sorted(model_dir.iterdir()) if p.is_file()}
    settings.pop("mask_path", None)  # (an input: as the file it names, with its size and time, below)
    inputs = {"mask": _real_paths(None if config.mask_path is None else str(config.mask_path)),
              "labels": _real_paths(str(labels)), "fasta": _real_paths(None if fasta is None else str(fasta)),
              "valid": _real_paths(None if valid is None else str(valid)), "tests": [_real_paths(str(t)) for t in tests]}
    contents = {"mask_file": _identity(config.mask_path),
                "labels_file": _identity(labels, stdin), "fasta_file": _identity(fasta, stdin),
                "valid_files": _identity(valid, stdin), "test_files": [_identity(t, stdin) for t in tests]}
    return {**settings, **inputs, **contents}


def _write_state(path: Path, state: dict) -> None:
    """The resumable state, behind a line with the sha256 of its bytes (fit's format), written to
    a fresh temporary (never through a link) and renamed over the last one."""
    import io

    from protrans_cli.io.files import create_fresh

    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        with open(create_fresh(tmp), "wb") as fh:
            fh.write(checked_state_bytes(buffer.getvalue()))
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # (the state written before stays whole)
        if (reason := disk_full(exc)) is not None:  # (a write's error names no file)
            raise RuntimeFailure(f"cannot save the finetune's state: {reason}", path=str(path)) from None
        raise
    tmp.replace(path)


def _device_rng(device) -> dict:
    """The GPU's (or Apple GPU's) random state, saved beside the CPU's."""
    return {"cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "mps_rng": torch.mps.get_rng_state() if device.type == "mps" else None}


def _set_device_rng(device, saved: dict) -> None:
    """Put back what _device_rng saved (a state saved on the CPU, or before it was kept: none)."""
    if device.type == "cuda" and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    elif device.type == "mps" and saved.get("mps_rng") is not None:
        torch.mps.set_rng_state(saved["mps_rng"])


def _read_state(path: Path) -> dict:
    """The saved state, its sha256 checked first (bytes changed on disk are refused, never trained on)."""
    saved = load_checked_state(path, "finetune", f"{force_option()} starts again")
    if not isinstance(saved, dict) or not isinstance(saved.get("fingerprint"), str):
        raise InputError(f"the saved finetune state lacks entries a finetune writes; {force_option()} starts again",
                         path=str(path))
    return saved


def _finished(out_dir: Path, fingerprint: dict) -> "FinetuneResult":
    """`--resume` of a finished run: nothing to do when it was made with these settings and
    inputs (as fit's --resume of a finished head); else a usage error naming what differs."""
    try:
        record = json.loads((out_dir / "finetune.json").read_text(encoding="utf-8"))
        saved = record["fingerprint"]
        if not isinstance(saved, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):  # (a run of a version that did not record it)
        raise UsageError(f"{out_dir} is a finished finetune: nothing to resume ({force_option()} trains it "
                         "again)") from None
    differ = _changed(saved, fingerprint)
    if differ:
        raise UsageError(f"{out_dir} is a finished finetune made with other settings or inputs ({', '.join(differ)}): "
                         f"{force_option()} replaces it")
    console.info(f"{out_dir} is complete: nothing to resume")
    return FinetuneResult(out_dir, record.get("metrics") or {}, record.get("history") or [])


def _remove_state(partial: Path) -> None:
    """The saved state only: OUT.partial/ itself holds the lock (removed by folder_lock when empty)."""
    for name in (STATE, STATE + ".tmp"):
        (partial / name).unlink(missing_ok=True)


def _finetune(held: contextlib.ExitStack, config: FinetuneConfig, labels, out_dir, *, fasta, valid,
              tests) -> FinetuneResult:
    from protrans_cli.embedders import resolve_device
    from protrans_cli.io.files import stdin_digest
    from protrans_cli.models import open_config
    from protrans_cli.threads import resolve_threads, torch_threads

    config.check()
    task = get_task(config.task, dual=config.dual)
    # (as fit: the disorder task's labels are the disorder column, the default mask; none instead)
    config = replace(config, mask_columns=resolve_mask_columns(
        config.task, mask_column_names(config.mask_columns, "FinetuneConfig.mask_columns"), given=False,
        flag=option("--mask-column", "mask_columns")))
    tests = list(tests)
    if [str(p) for p in (labels, fasta, valid, *tests)].count("-") > 1:
        # (the first read took it all: "<stdin>: is empty")
        raise UsageError("stdin ('-') can be one input at most: give the others as files")
    refuse_piped_mask(config.mask_path, 1 + (valid is not None) + len(tests))  # (read for each label file, as fit's)
    out_dir = checked_output(config, out_dir, [labels, fasta, valid, *tests, _model_dir(config.model)])
    # One finetune at a time on an OUT (a job started twice overwrote each other's state, and
    # --force deleted the other's under it); the temporaries of killed runs are cleared under it:
    # fit's lock of the same OUT.partial/, taken as fit takes it.
    _lock_head(held, out_dir)
    partial = partial_path(out_dir)
    architecture = architecture_for(task, config.architecture)
    config = replace(config, architecture=architecture, kernel=config.kernel or DEFAULT_KERNELS.get(architecture, 7))
    reads_residues = input_kind(task, architecture) == PER_RESIDUE
    # (an input piped in is compared by --resume as the bytes read: as a file, by none of them)
    stdin = stdin_digest(held, [labels, fasta, valid, *tests])
    if config.resume and not (partial / STATE).is_file() and (out_dir / "finetune.json").is_file():
        # (the same command with --resume after the run finished: a job script may always add it)
        return _finished(out_dir, _jsonable(_fingerprint(config, labels, fasta, valid, tests, stdin)))

    if config.class_weights and any(o.is_value for o in task.outputs):
        raise UsageError(f"{option('--class-weights', 'class_weights=True')} is for classification; the value task "
                         "is a regression")
    # the model's name checked (its config read, not its weights) before the label files: a name
    # that is not there failed after the labels' lines were printed, as if they had been the work
    open_config(config.model)
    sets = _read_label_sets(config, task, labels, fasta, valid, tests)
    task = sets.task
    weights = _class_weights(task, sets.train) if config.class_weights else None

    with torch_threads(), contextlib.ExitStack() as seeded:
        torch.set_num_threads(resolve_threads(config.threads, small_work=False))
        device, dtype = resolve_device(config.device)
        autocast = "bfloat16" if device.startswith("cuda") and dtype == "bfloat16" else None
        # (the caller's random generators put back afterwards, as fit does: a notebook seeded
        # before finetune() drew other numbers after it)
        seeded.enter_context(_fork_rng(torch, torch.device(device)))
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        model, loaded, embedder = _build_model(config, task, sets.sources, reads_residues, autocast, device)
        if weights is not None:
            weights = {k: v.to(device) for k, v in weights.items()}
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                      weight_decay=config.weight_decay)
        fingerprint = _jsonable(_fingerprint(config, labels, fasta, valid, tests, stdin))
        if sets.held_out is None:  # (the fraction held nothing out: not compared on --resume, fit's rule)
            fingerprint["valid_fraction"] = None
        progress = _start_or_resume(config, model, optimizer, rng, device, fingerprint, out_dir,
                                    [labels, fasta, valid, *tests])
        _train_epochs(config, task, model, optimizer, rng, device, weights, sets, progress, partial / STATE,
                      fingerprint)
        _load_best(model, task, progress)
        summary = _write_output(out_dir, model, loaded, embedder, task, config, sets, weights, progress, labels,
                                device, fingerprint)
        _remove_state(partial)
    console.info(f"wrote {out_dir}")
    return FinetuneResult(out_dir, summary, progress.history)


@dataclass
class _LabelSets:
    """finetune's label files read: the task as the training labels complete it, the training
    set, the validation set and every evaluation set (validation first), each set with its file."""

    task: Task
    train_set: SequenceData  # the training file as read (its SET column's records included)
    train: SequenceData
    valid_data: SequenceData
    valid_desc: str
    eval_sets: list  # (name, data, description)
    sources: list  # (data, file), for messages
    held_out: list | None  # ids of the --valid-fraction hold-out


def _read_label_sets(config: FinetuneConfig, task: Task, labels, fasta, valid, tests) -> _LabelSets:
    """The training, validation and test sets read and checked, as fit reads them, before any model
    is loaded; the task completed from the training labels (classes, outputs, value scale)."""
    held_out = None  # ids of the --valid-fraction hold-out
    masked: list[bool] = []  # whether --mask applied, file by file
    formats: list[str] = []  # the label files' formats, file by file
    # (--fasta read once for every label file: stdin's second read was a ValueError traceback, a
    # pipe's found it empty, "neither the file nor --fasta /dev/fd/63 gives" the test set's sequences)
    read = functools.partial(read_sequence_data, fasta=fasta, label_format=config.label_format, config=config,
                             masked=masked, sequences=None if fasta is None else read_sequences(fasta),
                             formats=formats)
    train_set = read(labels, task, mask_elsewhere=bool(valid or tests), own_splits=True)
    declared = {r.split for r in train_set.records if r.split}
    train_records = _only(train_set, {None, TRAIN}).records if declared else train_set.records
    if not train_records:
        raise no_training_records(labels, declared)
    with located(labels):
        task = task.with_classes_from(train_records)
    data_of = functools.partial(to_data, chains=config.chains, linker_length=config.linker_length)
    train = data_of(task, train_records, labels)
    if task.kind != PER_RESIDUE:  # (fit's rule: an output no training protein has a label for is left out)
        task = _outputs_with_labels(task, train, labels)
    if valid is not None:
        warn_unused_fraction(config.valid_fraction)  # (as fit warns)
        valid_set = read(valid, task, evaluation=True, used_split=VALID)
        records = evaluation_records(valid_set, VALID, valid, "finetune").records
        valid_data, valid_desc = data_of(task, records, valid, evaluating=True), str(valid)
    elif VALID in declared:
        warn_unused_fraction(config.valid_fraction, labels)
        valid_data = _own_split(data_of, task, train_set, VALID, labels, fasta)
        valid_desc = f"{labels} (its validation records)"
    else:
        train, valid_data, valid_desc = _hold_out(config, train, labels)
        held_out = sorted(m.id for m in valid_data.items)  # (recorded as fit records it: the split, recoverable)
    console.info(f"train: {len(train.items):,} proteins; validation: {valid_desc}")
    # every test set read and checked now, not after the epochs (a bad file failed only then)
    eval_sets = [("valid", valid_data, valid_desc)]
    sources = [(train, labels), (valid_data, labels if valid is None else valid)]  # (each set's file, for messages)
    for path in tests:
        label_set = read(path, task, evaluation=True, used_split=TEST)
        records = evaluation_records(label_set, TEST, path, "finetune").records
        name = _unique_name(name_of_test_set(path, Path(str(path)).name.split(".")[0] or "test"),
                            [s[0] for s in eval_sets])
        eval_sets.append((name, data_of(task, records, path, evaluating=True), str(path)))
        sources.append((eval_sets[-1][1], path))
    if not tests and TEST in declared:
        eval_sets.append(("test", _own_split(data_of, task, train_set, TEST, labels, fasta), f"{labels} (SET=test)"))
        sources.append((eval_sets[-1][1], labels))
    if config.mask_path is not None and not any(masked):
        raise UsageError(f"{option(f'--mask {config.mask_path}', f'mask_path {config.mask_path}')}: none of the "
                         "label files is FLIP-style labels whose ids it holds, the only ones a mask file applies to")
    refuse_unused_mask_columns(config.mask_columns, formats, config.task)  # (as fit)
    # (as fit: a --test that is the training file, or the validation set, was scored without a word)
    _warn_overlap(train, [(name, data, desc, None) for name, data, desc in eval_sets])
    if any(o.is_value for o in task.outputs):
        with located(labels):
            task = task.with_scale_from(train.targets)
    return _LabelSets(task, train_set, train, valid_data, valid_desc, eval_sets, sources, held_out)


def _own_split(data_of, task: Task, train_set, split: str, labels, fasta=None):
    """The data of the training label file's own validation or test records, their problems
    saying which records they are, as fit's (_load_split): "FILE: no labelled proteins" read as
    if the training set had none; so are those without a sequence (read_sequence_data's
    own_splits left them to be refused here, where they are used)."""
    try:
        records = _only(train_set, {split}).records
        if missing := [r.id for r in records if not r.sequence]:
            raise _without_sequence(missing, labels, fasta)
        return data_of(task, records, labels, evaluating=True)
    except InputError as exc:
        from protrans_cli.heads.fit import own_split_note

        exc.message += own_split_note(split, labels, "LABELS")
        raise InputError(exc.message, path=exc.path, record=exc.record, line=exc.line) from None


def _build_model(config: FinetuneConfig, task: Task, sources, reads_residues: bool, autocast, device):
    """The model to fine-tune on `device`: the encoder with LoRA adapters (its blocks recomputed
    with --activation-checkpointing) under a new head; and the model and embedder it was made of."""
    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.heads.lora import add_lora
    from protrans_cli.heads.model import build_head
    from protrans_cli.models import load_model

    loaded = load_model(config.model, device="cpu")
    embedder = TransformerEmbedder(loaded, (config.layer,), "cpu", "float32")
    _check_lengths(sources, embedder.max_residues)
    adapted = add_lora(embedder.model, loaded.family, rank=config.lora_rank, alpha=config.lora_alpha,
                       dropout=config.lora_dropout)
    if config.activation_checkpointing:  # (the same numbers: training/recompute.py)
        from protrans_cli.training.recompute import checkpoint_blocks

        checkpoint_blocks(embedder.model)
    head = build_head(task, embedder.embedding_dim, architecture=config.architecture, hidden=config.hidden,
                      kernel=config.kernel, dropout=config.dropout)
    model = FineTuned(embedder, head, reads_residues, autocast, chains=config.chains,
                      linker_length=config.linker_length, per_chain=task.kind == PER_RESIDUE).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    console.info(f"{config.model}: LoRA rank {config.lora_rank} on {len(adapted)} projections; "
                 f"{sum(p.numel() for p in trainable):,} trainable parameters of "
                 f"{sum(p.numel() for p in model.parameters()):,}")
    return model, loaded, embedder


@dataclass
class _Progress:
    """Where the epochs stand: what --resume reads back from OUT.partial/'s state."""

    best: dict = field(default_factory=lambda: {"score": float("-inf"), "loss": float("inf"),
                                                "kept_loss": float("inf"), "epoch": 0, "progress": 0})
    best_state: dict | None = None
    history: list = field(default_factory=list)
    first_epoch: int = 1
    stopped: bool = False


def _start_or_resume(config: FinetuneConfig, model, optimizer, rng, device, fingerprint: dict, out_dir: Path,
                     inputs) -> _Progress:
    """A new start (an interrupted run's state replaced only with --force), or with --resume the
    state of the interrupted run with the same settings and inputs, model and generators included."""
    partial = partial_path(out_dir)
    progress = _Progress()
    if (partial / STATE).is_file() and not config.resume:
        if not config.force:
            raise UsageError(f"{partial} holds an interrupted finetune: {resume_option()} continues it, "
                             f"{force_option()} starts again")
        _remove_state(partial)
    if config.resume and (partial / STATE).is_file():
        saved = _read_state(partial / STATE)
        differ = _changed(json.loads(saved["fingerprint"]), fingerprint)
        refuse_piped_resume(partial, differ, piped_files(inputs), "finetune", f"{force_option()} to start again")
        if differ:
            raise UsageError(f"{partial} was made with other settings or inputs ({', '.join(differ)}): "
                             f"{same_settings_with_resume()}, or {force_option()} to start again")
        model.load_state_dict(saved["model"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = json.loads(saved["numpy_rng"])
        torch.set_rng_state(saved["torch_rng"])
        # dropout on a GPU draws from the device's generator, which manual_seed above reset:
        # without it the resumed epochs replayed the first epoch's masks (as fit's did)
        _set_device_rng(torch.device(device), saved)
        progress = _Progress(best=json.loads(saved["best"]), best_state=saved["best_state"],
                             history=json.loads(saved["history"]), first_epoch=int(saved["epoch"]) + 1,
                             stopped=bool(saved["stopped"]))
        console.info(f"resuming {out_dir} after epoch {progress.first_epoch - 1}")
    elif config.resume:
        console.info(f"nothing to resume in {partial}: starting from the beginning")
    return progress


def _trained_state(model) -> dict:
    """What fine-tuning changed: the encoder's LoRA weights and the head's, on the CPU."""
    from protrans_cli.heads.lora import lora_state

    return {**{f"encoder.{k}": v.detach().cpu().clone() for k, v in lora_state(model.encoder).items()},
            **{f"head.{k}": v.detach().cpu().clone() for k, v in model.head.state_dict().items()}}


def _train_epochs(config: FinetuneConfig, task: Task, model, optimizer, rng, device, weights, sets: _LabelSets,
                  progress: _Progress, state_file: Path, fingerprint: dict) -> None:
    """The epochs from `progress.first_epoch` until --max-epochs or --patience, each validated
    and followed by the resumable state in `state_file`; `progress` updated."""
    from protrans_cli.heads.fit import _validate  # (looked up at the call: tests stop a run inside it)

    best = progress.best
    with torch.enable_grad():
        for epoch in range(progress.first_epoch, config.max_epochs + 1):
            if progress.stopped:
                break
            start = time.perf_counter()
            model.train()
            loss_sum, steps = 0.0, 0
            optimizer.zero_grad(set_to_none=True)
            for batch in console.progress(sets.train.batches(config.max_residues, True, rng), desc=f"epoch {epoch}",
                                          unit="batch"):
                batch = batch.to(device)
                loss, counts = _loss(task, model(batch.x, batch.mask), batch.targets, weights)
                if not any(counts.values()):
                    continue
                (loss / config.accumulate).backward()
                steps += 1
                # (batches with a loss counted: one with nothing to score, skipped above, made
                # a step take up to 2N - 1 batches' gradients where --accumulate N said N)
                if steps % config.accumulate == 0:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_sum += float(loss.detach())
            optimizer.step()  # (the last, partial accumulation; a no-op without gradients)
            optimizer.zero_grad(set_to_none=True)
            valid_loss, valid_acc = _validate(model, task, sets.valid_data, config)
            score = float(np.mean(list(valid_acc.values()))) if valid_acc else float("-inf")
            line = {"epoch": epoch, "train_loss": loss_sum / max(steps, 1), "valid_loss": valid_loss,
                    **{f"valid_{k}": v for k, v in valid_acc.items()},
                    "seconds": round(time.perf_counter() - start, 3)}
            progress.history.append(line)
            # fit's rule: the best validation score is kept (a lower loss breaks ties); patience
            # counts epochs that improve neither score nor loss
            improved = score > best["score"] or (score == best["score"] and valid_loss < best["kept_loss"])
            if improved:
                best.update(score=score, epoch=epoch, kept_loss=valid_loss)
                progress.best_state = _trained_state(model)
            if improved or valid_loss < best["loss"]:
                best["progress"] = epoch
            best["loss"] = min(best["loss"], valid_loss)
            console.info(f"epoch {epoch}: train loss {line['train_loss']:.4f}, valid loss {valid_loss:.4f}, "
                         + ", ".join(f"{k} {v:.4f}" for k, v in valid_acc.items())
                         + f" ({line['seconds']:.1f} s){' *' if improved else ''}")
            progress.stopped = epoch - best["progress"] >= config.patience
            _write_state(state_file, {
                "fingerprint": json.dumps(fingerprint), "model": _trained_state(model),
                "optimizer": optimizer.state_dict(), "numpy_rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(), **_device_rng(torch.device(device)),
                "best_state": progress.best_state, "best": json.dumps(best),
                "history": json.dumps(progress.history), "epoch": epoch, "stopped": progress.stopped})


def _load_best(model, task: Task, progress: _Progress) -> None:
    """The best validation epoch's weights into `model`, in eval mode; which epoch, said."""
    missing, unexpected = model.load_state_dict(progress.best_state, strict=False)
    if unexpected or any(".lora_" in k or k.startswith("head.") for k in missing):
        raise RuntimeError(f"the kept state does not fit the model: {(unexpected or missing)[:3]}")
    model.eval()
    best = progress.best
    scored = any(k.startswith("valid_") and k != "valid_loss" for line in progress.history for k in line)
    console.info(f"best validation epoch {best['epoch']} "
                 + (f"(mean {_metric_names(task)} {best['score']:.4f})" if scored
                    else f"(by validation loss {best['kept_loss']:.4f}: no {_metric_names(task)} to score)"))


def _write_output(out_dir: Path, model, loaded, embedder, task: Task, config: FinetuneConfig, sets: _LabelSets,
                  weights, progress: _Progress, labels, device, fingerprint: dict) -> dict:
    """OUT/model, OUT/head, OUT/finetune.json written whole (in a temporary folder that replaces
    OUT), the tests scored with the saved model; returns the summary."""
    from protrans_cli.io.files import make_temporary, replace_directory

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary(out_dir.parent, f".{out_dir.name}.", folder=True)
    try:
        summary = _write(tmp, out_dir, model, loaded, embedder, task, config, sets.train, sets.valid_desc,
                         sets.eval_sets, weights, sets.train_set, progress.history, progress.best, labels, device,
                         fingerprint, held_out=sets.held_out)
        replace_directory(tmp, out_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (reason := disk_full(exc)) is not None:  # (the error named a file in the hidden temporary, or none)
            raise RuntimeFailure(f"cannot write the finetune: {reason} (its state is kept: {resume_option()} "
                                 "finishes it)",
                                 path=str(out_dir)) from None
        raise
    return summary


def _write_card(folder: Path, merged, loaded, config, task, proteins: int) -> None:
    """OUT/model/README.md: a model card naming the base model and what finetune did to it
    (training/card.py); a warning, and no card, where it cannot be made."""
    from protrans_cli.training.card import finetune_card, made_card, write_card

    text = made_card(lambda: finetune_card(family=loaded.family, tokenizer=loaded.tokenizer, model=merged,
                                           config=config, task=task, proteins=proteins), "the fine-tuned model")
    if text is not None:
        write_card(folder, text)


def _write(tmp: Path, out_dir: Path, model, loaded, embedder, task, config, train, valid_desc, eval_sets, weights,
           train_set, history, best, labels, device: str = "cpu", fingerprint: dict | None = None,
           held_out: list[str] | None = None) -> dict:
    from protrans_cli.heads.lora import merged_copy
    from protrans_cli.heads.metrics import dumps as metrics_json
    from protrans_cli.heads.model import Ensemble, head_format, network_hyperparameters, save_head
    from protrans_cli.io.files import default_permissions
    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.embed import model_attr
    from protrans_cli.models import _quiet_transformers, load_model, weights_fingerprint

    merged = merged_copy(model.encoder).to("cpu")
    with _quiet_transformers():  # (transformers' "Writing model shards" bar, also under -q)
        loaded.family.save_pretrained(merged, loaded.tokenizer, tmp / "model")
    _write_card(tmp / "model", merged, loaded, config, task, len(train.items))
    # The head as fit writes it, reading embeddings of OUT/model (an absolute path: predict --fasta
    # loads the recorded model as given, from whatever folder it runs in)
    head_dir = tmp / "head"
    head_dir.mkdir()
    (head_dir / "metrics").mkdir()
    head = model.head.to("cpu").eval()
    layer = int(embedder.layers[0])
    # The base model as it identifies it wherever OUT is read: a local directory by its absolute
    # path and weights fingerprint (`models/tiny_esm8`, as given, meant nothing elsewhere), a hub
    # id or short name as given
    base = model_attr(config.model)
    embedding = {"model": str(out_dir / "model"), "family": embedder.family, "layers": [layer],
                 "embedding_dim": int(embedder.embedding_dim), "input_prefix": embedder.input_prefix,
                 "finetuned_from": base}
    if config.chains != "error":  # (how it read complexes: predict --fasta reads them so by default)
        embedding.update(chains=config.chains, linker_length=config.linker_length)
    saved_weights = weights_fingerprint(tmp / "model")  # (of the files' contents: the same once OUT/model)
    if saved_weights:  # (predict: a model saved over OUT/model since is not the one the head was trained with)
        embedding["weights_fingerprint"] = saved_weights
    head_config = {
        "format": "protrans-head", "format_version": head_format(config.architecture), "protrans_version": __version__,
        "task": task.to_json(), "kind": task.kind, "architecture": config.architecture,
        "input_dim": int(embedder.embedding_dim), "embedding": embedding, "layer": layer,
        "ensemble": 1, "seeds": [config.seed],
        "hyperparameters": {**network_hyperparameters(task, config.architecture, hidden=config.hidden,
                                                      kernel=config.kernel, dropout=config.dropout),
                            "lr": config.lr, "weight_decay": config.weight_decay, "max_epochs": config.max_epochs,
                            "patience": config.patience, "max_residues": config.max_residues,
                            "batch_size": None, "standardise": False,
                            "class_weights": None if weights is None else {k: v.tolist() for k, v in weights.items()}},
        "training": {"embeddings": None, "finetuned": str(out_dir), "labels": str(labels),
                     "proteins": len(train.items), "validation": valid_desc, "notes": train_set.notes,
                     **({"held_out": held_out} if held_out is not None else {})},
        # (--mask-column and --mask as fit records them: `predict --labels` scores with the head's own
        # columns, and names its FLIP mask)
        "config": {"n_bootstrap": config.n_bootstrap, "seed": config.seed, "task": config.task, "layer": layer,
                   "mask_path": config.mask_path, "mask_columns": list(mask_column_names(config.mask_columns))},
    }
    ensemble = Ensemble([head], task).eval()
    save_head(head_dir, ensemble, head_config)
    with open(head_dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for line in history:
            fh.write(metrics_json(line, indent=None) + "\n")

    # every set scored by embedding it with the saved model (embed's own code: load_model and
    # TransformerEmbedder) and fit's head evaluation on those rows
    # (on the training device: a GPU run embedded every set on the CPU, hours for ProtT5-XL)
    reads_residues = model.reads_residues
    # The trained encoder and its merged copy are written: their memory is let go first. Both were
    # held while the saved model was loaded and scored, twice the model on the device (and three
    # times on the host): a finetune that fitted its GPU ran out of memory here after all its
    # epochs, and again at each --resume. (The head, trained state and optimizer are small.)
    del merged
    model.encoder.to("meta")
    saved = TransformerEmbedder(load_model(tmp / "model", device="cpu"), (layer,), device, "float32")
    summary = {}
    for name, data, desc in eval_sets:
        rows = embedded_rows(saved, data.sequences, config.max_residues, pooled=not reads_residues,
                             chains=config.chains, linker_length=config.linker_length)
        result = evaluate_data(ensemble, task, rows_data(rows, data, reads_residues), n_boot=config.n_bootstrap,
                               max_residues=config.max_residues, seed=config.seed)
        summary[name] = write_metrics(head_dir / "metrics", name, result, str(out_dir / "model"), desc, plots=False)
    (head_dir / "metrics.json").write_text(metrics_json(summary) + "\n", encoding="utf-8")
    (tmp / "finetune.json").write_text(metrics_json({
        "format": "protrans-finetune", "protrans_version": __version__, "model": base,
        **({"model_weights_fingerprint": loaded.weights_fingerprint} if loaded.weights_fingerprint else {}),
        "lora": {"rank": config.lora_rank, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                 "targets": list(loaded.family.lora_targets)},
        "config": _jsonable(asdict(replace(config, resume=False, force=False))),
        "labels": str(labels), "validation": valid_desc, "best_epoch": best["epoch"], "history": history,
        "metrics": summary,
        "fingerprint": fingerprint}) + "\n",  # (what `finetune --resume` of the finished run compares)
        encoding="utf-8")
    default_permissions(tmp)
    return summary


def embedded_rows(embedder, sequences: list[str], max_residues: int, *, pooled: bool, chains: str = "error",
                  linker_length: int = DEFAULT_LINKER_LENGTH) -> list[np.ndarray]:
    """embed's arrays of the last (or chosen) layer: (L, D) per sequence, or (D,) with `pooled`; a
    complex's rows its chains' residues as embed --chains `chains` gives them, its vector their mean."""
    if any(":" in s for s in sequences):
        texts, pieces = model_pieces(sequences, chains, linker_length)
        arrays = embedded_rows(embedder, texts, max_residues, pooled=False)
        rows = [np.concatenate([arrays[t][first:first + n] for t, first, n in parts]) for parts in pieces]
        return [r.mean(axis=0) if pooled else r for r in rows]
    order = np.argsort([len(s) for s in sequences], kind="stable")
    rows: dict[int, np.ndarray] = {}
    batch: list[int] = []

    def flush():
        arrays = embedder.embed_batch([sequences[i] for i in batch], pooled=pooled)
        for i, a in zip(batch, arrays):
            rows[int(i)] = a[0]
        batch.clear()

    for i in order:
        if batch and (len(batch) + 1) * len(sequences[i]) > max_residues:
            flush()
        batch.append(i)
    if batch:
        flush()
    return [rows[i] for i in range(len(sequences))]


def rows_data(rows: list[np.ndarray], data: SequenceData, reads_residues: bool):
    """fit's in-memory data of embedded rows with `data`'s items and targets."""
    from protrans_cli.heads.data import ProteinData

    if reads_residues:
        if data.per_residue and any(":" in s for s in data.sequences):
            # (a per-residue head reads each chain of a complex as a protein of its own, as fit's
            # and predict's; scored as one protein of all its chains' residues: evaluate_data)
            from protrans_cli.heads.data import by_chain, chain_items

            chains = {item.key: tuple(chain_lengths(s)) for item, s in zip(data.items, data.sequences) if ":" in s}
            pieces = [piece for item, r in zip(data.items, rows) for piece in by_chain(r, chains.get(item.key))]
            out = ResidueData.in_memory([r.astype(np.float32) for r in pieces], int(rows[0].shape[-1]))
            out.items = chain_items(data.items, chains)
            return out
        out = ResidueData.in_memory([r.astype(np.float32) for r in rows], int(rows[0].shape[-1]))
        out.items = data.items
        if not data.per_residue:
            out.targets = data.targets
        return out
    out = ProteinData.in_memory(np.stack(rows).astype(np.float32))
    out.items, out.targets = data.items, data.targets
    return out

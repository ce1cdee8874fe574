"""Train a head on frozen embeddings, evaluate it on every given set, and write the head directory.

    from protrans_cli.heads.fit import FitConfig, fit
    fit(FitConfig(task="ss3"), "train.h5", "Train_HHblits.csv.gz", "heads/ss3",
        tests=[("cb513.h5", "CB513_HHblits.csv")])

Reads top to bottom in run order: labels -> data (validation given, declared by the label file,
a held-out fraction of train, or with `folds` K folds of train, member k validated on fold k) ->
for each ensemble member: seed, head, Adam, epochs with early stopping on validation accuracy ->
evaluation of every set (the folds out of fold, as set "cv") -> the head directory, written to a
temporary directory and renamed into place only when complete.

Head directory: config.json, weights.safetensors, metrics.jsonl (one line per member and epoch),
curves.png, metrics.json (headline numbers of every set) and metrics/<set>.json with per-class
metrics and confusion matrices (also as metrics/<set>.<output>.png).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from protrans_cli import console
from protrans_cli._version import __version__
from protrans_cli.errors import (TORCH_SEEDS, InputError, ModelError, RuntimeFailure, UsageError, expect_options,
                                 expect_path, first_line, force_option, given, located, one_of, option, plain_numbers,
                                 resume_option, same_settings_with_resume, seed_in_range, torch_load_problem,
                                 whole_number)
from protrans_cli.heads.data import (DEFAULT_CACHE_BYTES, ChainRows, NothingMatched, ProteinData, TrainingSet,
                                     embed_layer, joined_chains, load_data, report_unlabelled, stored_layer_index,
                                     subset, warn_unfinished, whole_items)
from protrans_cli.heads.labels import (TEST, TRAIN, VALID, LabelSet, mask_column_names, name_of_test_set,
                                      read_labels, unmasked_flip_warning)
from protrans_cli.heads.metrics import (confusion_matrix, dumps as metrics_json, evaluate, evaluate_values, mcc,
                                        print_report, save_confusion_png, save_scatter_png, spearman, summary_line)
from protrans_cli.heads.tasks import (DEFAULT_KERNELS, DUAL_LABELS, IGNORE, TASKS, UNUSED_OPTIONS, Task,
                                     architecture_for, default_mask_columns, get_task, input_kind,
                                     resolve_mask_columns, unused_options)
from protrans_cli.io.files import (atomic_output, check_replaceable, create_fresh, default_permissions, disk_full,
                                   empty_folder, folder_can_be_made, folder_lock, folder_made, input_inside,
                                   make_temporary, odd_kind, own_folder_output, remove_dead_temporaries,
                                   remove_with_outputs, replace_directory, same_file, signals_held, stdin_digest)
from protrans_cli.io.h5 import (HDF5_FROM_STDIN, PER_RESIDUE, EmbeddingsReader, escape_key, input_prefix_of,
                                pooling_kind, prefix_words, same_weights, three_di_words)
from protrans_cli.threads import torch_threads


# How messages name a FitConfig field: by its flag.
_FIT_FLAGS = {"max_epochs": "--max-epochs", "patience": "--patience", "ensemble": "--ensemble",
              "max_residues": "--max-residues", "batch_size": "--batch-size", "n_bootstrap": "--bootstrap",
              "hidden": "--hidden", "kernel": "--kernel", "valid_fraction": "--valid-fraction", "lr": "--lr",
              "weight_decay": "--weight-decay", "dropout": "--dropout", "architecture": "--architecture",
              "folds": "--folds"}


def _flag(name: str) -> str:
    """How a message names FitConfig field `name`: by its flag at the command line, and to a
    library call by the field (`option`; --bootstrap is n_bootstrap)."""
    return option(_FIT_FLAGS[name], name)


_MAX_SEED = 2**64 - 1  # torch.manual_seed's range


@dataclass
class FitConfig:
    task: str = "ss3"
    max_epochs: int | None = None  # None: 30 per residue, 200 per protein (epochs there take milliseconds)
    patience: int | None = None  # epochs improving neither validation accuracy nor loss; None: 5 / 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_residues: int = 8192  # per-residue batches: padded residues per batch
    batch_size: int = 64  # per-protein batches: proteins per batch
    class_weights: bool = False  # weight the loss by inverse class frequency in train
    ensemble: int = 1  # members trained from seeds seed, seed+1, ...
    # K-fold cross-validation: member k trains on the other folds of the training proteins and
    # stops early on fold k; the head is the K members' ensemble, scored out of fold ("cv").
    folds: int | None = None
    seed: int = 0
    valid_fraction: float = 0.1  # held out of train when no validation set is given
    # The network: None is the task's default, "cnn" per residue, "fnn" per protein; a per-protein
    # task may take "light-attention" (Stärk et al. 2021), which reads per-residue embeddings; any
    # task "linear" (the linear probe: one affine map of each residue's row or of the protein's vector).
    architecture: str | None = None
    hidden: int = 32
    kernel: int | None = None  # None: 7 (the CNN), 9 (Light Attention); the FNN and linear heads have none
    dropout: float = 0.25
    dual: str = "first"  # loc: Cytoplasm-Nucleus -> Cytoplasm ("first") or left out ("skip")
    layer: int = -1  # which layer when the embeddings hold several
    on_mismatch: str = "error"  # "skip": leave out mismatched records; "missing": only those without an embedding
    cache_bytes: int = DEFAULT_CACHE_BYTES  # per-residue sets of up to this many bytes are read into RAM
    n_bootstrap: int = 1000
    threads: int | None = None
    label_format: str = "auto"
    mask_path: str | None = None  # FLIP mask FASTA
    mask_columns: tuple[str, ...] = ("disorder",)  # NetSurfP columns whose 1.0 marks evaluated residues
    force: bool = False  # replace an existing head directory
    device: str = "auto"  # cuda when there is one, else cpu; or cpu, cuda, cuda:N, mps
    resume: bool = False  # continue the interrupted fit kept in OUTPUT.partial
    # FNN and per-protein linear heads: z-score inputs with the training mean/std (Light Attention: raw rows)
    standardise: bool = True
    plots: bool = True  # curves.png and metrics/<set>.<output>.png (False: no matplotlib at all)

    def __post_init__(self):
        # numpy's scalars, which expect_options accepts (a setting taken from an array or a data
        # frame): the head's config.json was "TypeError: Object of type int64 is not JSON
        # serializable", once every epoch had run
        plain_numbers(self)

    def check(self) -> None:
        if self.architecture is not None and not isinstance(self.architecture, str):
            raise UsageError(f"{_flag('architecture')} is a name, got {type(self.architecture).__name__} "
                             f"{self.architecture!r:.40}")
        # (n_bootstrap: check_resamples' bound alone; "--bootstrap must be at least 1, got 0" sent the user to 1,
        # which was then refused as "must be at least 10")
        for name in ("max_epochs", "patience", "ensemble", "max_residues", "batch_size", "hidden", "kernel"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"{_flag(name)} must be at least 1, got {getattr(self, name)}")
        check_resamples(self.n_bootstrap, _flag("n_bootstrap"))
        if self.folds is not None:
            if self.folds < 2:
                raise UsageError(f"{_flag('folds')} must be at least 2 (each fold is scored by a member trained on "
                                 f"the others), got {self.folds}")
            if self.ensemble not in (1, self.folds):
                raise UsageError(f"{given('--folds', 'folds', self.folds)} trains one member per fold ({self.folds} "
                                 f"members): leave out {given('--ensemble', 'ensemble', self.ensemble)}")
        if self.kernel is not None and self.kernel % 2 != 1:
            raise UsageError(f"{_flag('kernel')} must be odd (every residue keeps its position), got {self.kernel}")
        for name, text, ok in (("valid_fraction", "between 0 and 1", lambda v: 0 < v < 1),
                               ("lr", "positive", lambda v: v > 0),
                               ("weight_decay", "0 or more", lambda v: v >= 0),
                               ("dropout", "in [0, 1)", lambda v: 0 <= v < 1)):
            value = getattr(self, name)
            if not (math.isfinite(value) and ok(value)):
                raise UsageError(f"{_flag(name)} must be {text}, got {value}")
        # (torch seeds are unsigned 64-bit: a larger one was a traceback, "Overflow when unpacking
        # long long", and with --ensemble only at the member whose seed passed 2**64 - 1, after
        # the members before it had been trained)
        members, name = (self.folds, "folds") if self.folds else (self.ensemble, "ensemble")
        why = TORCH_SEEDS if members == 1 else (f"2**64 - {members} with {given(_FIT_FLAGS[name], name, members)}: "
                                                "member k seeds seed + k")
        seed_in_range(self.seed, _MAX_SEED - members + 1, why)
        if self.cache_bytes < 0:
            raise UsageError(option(f"--cache-gb must be 0 or more, got {self.cache_bytes / (1 << 30):g}",
                                    f"cache_bytes must be 0 or more, got {self.cache_bytes}"))
        # (no flag: --skip-mismatched and --only-embedded set it)
        one_of(self.on_mismatch, ("error", "skip", "missing"), "on_mismatch")


@dataclass
class FitResult:
    head_dir: Path
    metrics: dict  # set name -> output -> headline metrics
    history: list[dict] = field(default_factory=list)


@torch_threads()  # puts the caller's torch thread count back
def fit(config: FitConfig, embeddings, labels, out_dir, *, valid: tuple | None = None,
        tests: list[tuple] = ()) -> FitResult:
    """Train `config.task` on (embeddings, labels); `valid`/`tests` are (embeddings, labels) pairs."""
    with contextlib.ExitStack() as held:  # the lock on HEAD.partial/, taken once the settings are checked
        return _fit(held, config, embeddings, labels, out_dir, valid=valid, tests=tests)


def _fit(held: contextlib.ExitStack, config: FitConfig, embeddings, labels, out_dir, *, valid, tests) -> FitResult:
    import torch

    from protrans_cli.threads import resolve_threads

    expect_options(config, FitConfig, "config")
    config.check()
    # (one column given as a str: that column, also in config.json, which predict reads back)
    config = replace(config, mask_columns=mask_column_names(config.mask_columns, "FitConfig.mask_columns"))
    # (the disorder task: its labels are the disorder column, FitConfig's default mask; none instead)
    config = replace(config, mask_columns=resolve_mask_columns(config.task, config.mask_columns, given=False,
                                                               flag=option("--mask-column", "mask_columns")))
    _check_pairs(valid, tests)
    for name, value in (("embeddings", embeddings), ("labels", labels), ("out_dir", out_dir)):
        # (a list of files was a TypeError, None as out_dir too, None as embeddings "None: no such file")
        expect_path(value, name, " (one file or directory)")
    if config.folds and valid is not None:
        # (before any file is read)
        no_valid = option("--valid (put those proteins in --labels, or leave out --folds)",
                          "valid (put those proteins in labels, or leave out folds)")
        raise UsageError(f"{given('--folds', 'folds', config.folds)} validates each member on the fold it was not "
                         f"trained on: it takes no {no_valid}")
    out_dir = _checked_output(config, out_dir, embeddings, labels, valid, tests)
    task = get_task(config.task, dual=config.dual)
    if config.class_weights and any(o.is_value for o in task.outputs):
        # (before any file is read: it was refused only once every set had been read and matched)
        raise UsageError(f"{option('--class-weights', 'class_weights=True')} is for classification; the value task "
                         "is a regression")
    # (resolved before the fingerprint: a head fit without --architecture or --kernel records
    # what it used, and its --resume compares the same settings as one given them)
    architecture = architecture_for(task, config.architecture)
    per_residue = task.kind == PER_RESIDUE
    reads_residues = input_kind(task, architecture) == PER_RESIDUE
    config = replace(config, architecture=architecture, kernel=config.kernel or DEFAULT_KERNELS.get(architecture, 7),
                     ensemble=config.folds or config.ensemble,  # (one member per fold)
                     max_epochs=config.max_epochs or (30 if per_residue else 200),
                     patience=config.patience or (5 if per_residue else 10))
    # (labels piped in are compared by --resume as the bytes read: as a file, by none of them)
    stdin = stdin_digest(held, label_files(labels, valid, tests))
    fingerprint = _fingerprint(config, embeddings, labels, valid, tests, stdin)
    for path in dict.fromkeys(str(p) for p in [embeddings, *(valid[:1] if valid else ()), *(t[0] for t in tests)]):
        warn_unfinished(path)
    if out_dir.exists() and not empty_folder(out_dir):  # (an empty one: a workflow's made for it)
        finished = _existing_head(config, out_dir, fingerprint, embeddings, labels, valid, tests)
        if finished is not None:
            return finished
    _lock_head(held, out_dir)
    torch.set_num_threads(resolve_threads(config.threads, small_work=not reads_residues))
    device = head_device(config.device)
    # Checked before any data is read: an interrupted fit is continued or knowingly replaced.
    state = FitState.open(partial_path(out_dir), fingerprint, resume=config.resume, force=config.force,
                          piped=piped_label_files(labels, valid, tests))

    # --- labels and data ---
    sets = _read_sets(config, task, embeddings, labels, valid, tests)
    task, train = sets.task, sets.train
    if sets.held_out is None and "valid_fraction" in fingerprint:
        # The fraction held nothing out (the file's own validation records were the validation
        # set): recorded as unused, so that --resume does not compare it (the same fit without
        # --valid-fraction was refused "other settings (valid_fraction)"). The labels are compared:
        # other ones, which may not declare validation records, are refused as such.
        fingerprint["valid_fraction"] = None
    if any(o.is_value for o in task.outputs):
        with located(labels):
            task = task.with_scale_from(train.targets)
    weights = _class_weights(task, train) if config.class_weights else None

    # --- train each ensemble member, keeping a resumable state after every epoch ---
    members, history = _train_ensemble(config, task, train, sets.valid, weights, device, state, folds=sets.folds)

    # --- evaluate and write the head directory ---
    from protrans_cli.heads.model import Ensemble, save_head

    ensemble = Ensemble(members, task).eval()  # on `device`: evaluation runs there too
    tmp = make_temporary(out_dir.parent, f".{out_dir.name}.", folder=True)
    try:
        summary = _write_evaluation(tmp, ensemble, task, history, sets.eval_sets, config,
                                    cv=None if sets.folds is None else (train, sets.folds, str(embeddings),
                                                                        sets.valid_desc))
        save_head(tmp, ensemble, _head_config(config, task, sets, weights, fingerprint, embeddings, labels))
        (tmp / "metrics.json").write_text(metrics_json(summary) + "\n", encoding="utf-8")
        default_permissions(tmp)
        replace_directory(tmp, out_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (reason := disk_full(exc)) is not None:  # (the error named a file in the hidden temporary)
            raise RuntimeFailure(f"cannot write the head: {reason} (its state is kept: {resume_option()} finishes it)",
                                 path=str(out_dir)) from None
        raise
    with signals_held():  # a Ctrl-C half-way through left an empty HEAD.partial/ behind
        state.remove()
        console.output_complete(str(out_dir))  # (before a signal held meanwhile is delivered)
    console.info(f"wrote {out_dir}")
    return FitResult(out_dir, summary, history)


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def _check_pairs(valid, tests) -> None:
    """`valid` is one (embeddings, labels) pair and `tests` a list of them: `tests=("t.h5", "t.csv")`
    (one pair, not in a list) was a ValueError "too many values to unpack", and a dict an IndexError."""
    def pair(value) -> bool:
        return isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_path(p) for p in value)

    if valid is not None and not pair(valid):
        raise UsageError(f"valid must be one (embeddings, labels) pair of paths, got {type(valid).__name__} "
                         f"{valid!r:.80}")
    if isinstance(tests, (str, bytes, os.PathLike, dict)) or not isinstance(tests, (tuple, list)) \
            or not all(pair(t) for t in tests):
        one = isinstance(tests, (tuple, list)) and len(tests) == 2 and all(_is_path(p) for p in tests)
        hint = f": one pair goes in a list, tests=[{tuple(tests)!r:.80}]" if one else ""
        raise UsageError(f"tests must be a list of (embeddings, labels) pairs of paths, got {type(tests).__name__} "
                         f"{tests!r:.80}{hint}")


def _checked_output(config: FitConfig, out_dir, embeddings, labels, valid, tests) -> Path:
    """The head directory -o names (through a link, the folder it names), after the checks that
    need nothing read: stdin given twice, or where a file is needed; an -o that cannot be a head."""
    label_inputs = [labels, *(pair[1] for pair in ([valid] if valid else []) + list(tests))]
    if sum(str(path) == "-" for path in label_inputs) > 1:  # the first read takes it all ("<stdin>: is empty")
        raise UsageError("stdin ('-') can be one label file at most: give the others as files")
    # (before the labels are read, and exit 2 as `embed -o -` and `predict --probabilities -`: this
    # was an input error once the training labels had been read)
    if any(str(pair[0]) == "-" for pair in [(embeddings,), *([valid] if valid else []), *tests]):
        raise UsageError(HDF5_FROM_STDIN)
    if str(config.mask_path) == "-":  # read for each label file: the evaluation sets' reads found it empty
        raise UsageError(f"{option('--mask', 'mask_path')} cannot be stdin ('-'): it is read for each label file; "
                         "give it as a file")
    refuse_piped_mask(config.mask_path, len(label_inputs))
    # (written through a link, -o head -> /scratch/heads/x: its HEAD.partial and the swap happen
    # beside the folder it names)
    return own_folder_output(out_dir, "a head directory", "heads/ss3")


def refuse_unused_mask_columns(mask_columns, formats: list[str], task_name: str | None = None) -> None:
    """--mask-column other than the default (the task's: default_mask_columns) where none of the
    label files (their `formats`, file by file) is a NetSurfP CSV, the only ones whose columns it
    picks (fit's and finetune's): read without it, another format's labels were trained on in
    full, without a word."""
    names = tuple(mask_column_names(mask_columns))
    default = FitConfig.mask_columns if task_name is None else default_mask_columns(task_name)
    if names != default and "netsurfp" not in formats:
        named = option(f"--mask-column {' --mask-column '.join(names)}", f"mask_columns={names}")
        raise UsageError(f"{named}: none of the label files is a NetSurfP CSV ({', '.join(sorted(set(formats)))}), "
                         "the only ones whose columns it picks")


def refuse_piped_mask(mask_path, label_files: int) -> None:
    """fit's and finetune's --mask is read for each of the `label_files`: a pipe only once, so
    `--mask <(zcat mask.fasta.gz)` scored --test without the mask ("which holds none of its
    ids"), and a named pipe waited for a second writer for ever."""
    from protrans_cli.embed import is_stream

    if label_files > 1 and mask_path is not None and is_stream(mask_path):
        raise UsageError(f"{option(f'--mask {mask_path}', f'mask_path {mask_path}')} is a pipe, which can be read "
                         "once, and it is read for each label file: give it as a file (a compressed one is read as "
                         "it is)")


def _existing_head(config: FitConfig, out_dir: Path, fingerprint: dict, embeddings, labels, valid,
                   tests) -> FitResult | None:
    """For an -o that exists: the finished head a `--resume` asks for again, else None where --force
    may replace it; anything else is refused."""
    if not config.force:
        partial = partial_path(out_dir)
        if config.resume and (not partial.exists() or _left_behind(partial, out_dir)):
            finished = _finished(out_dir, fingerprint)  # a job script's retry after a success
            if finished is not None:
                if partial.exists():  # a kill between the head's rename and the state's removal
                    FitState(partial, fingerprint).remove()
                console.info(f"{out_dir} is complete: nothing to resume")
                return finished
            if _unrecorded_head(out_dir):
                raise UsageError(f"{out_dir} is a head written by an earlier protrans, which did not record the "
                                 f"settings and inputs {resume_option()} compares: it cannot tell whether this "
                                 f"{option('command', 'call')} made it; use it as it is, or {force_option()} fits it "
                                 "again")
        raise UsageError(f"{out_dir} exists ({force_option()} replaces it)")
    replaceable_head(out_dir, embeddings, labels, valid, tests)
    return None


def _unrecorded_head(out_dir: Path) -> bool:
    """Whether `out_dir` holds a head of a version that did not record its fingerprint (before
    2026-11-29: `fit --resume` of it said only that it exists, as for a folder of other files)."""
    try:
        config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # (a fit's: trained on an embeddings file; import-head's and finetune's heads record none)
    return (isinstance(config, dict) and config.get("format") == "protrans-head" and "fingerprint" not in config
            and isinstance(config.get("training"), dict) and isinstance(config["training"].get("embeddings"), str)
            and (out_dir / "weights.safetensors").is_file())


def replaceable_head(out_dir: Path, embeddings, labels, valid, tests) -> None:
    """--force replaces the whole directory (fit's and a search's -o): never one that holds this
    run's own inputs, and only a head (not a project folder given as -o)."""
    inputs = [embeddings, labels, *(p for pair in ([valid] if valid else []) + list(tests) for p in pair)]
    if (path := input_inside(out_dir, inputs)) is not None:
        raise UsageError(f"{out_dir} holds the input {path}: {force_option()} would delete it (choose another "
                         f"{option('-o', 'out_dir')})")
    head = (out_dir / "config.json").is_file() and (out_dir / "weights.safetensors").is_file()
    check_replaceable(out_dir, "fit", lambda entry: head)


def head_in_use() -> str:
    """What a fit, a search or a finetune meets where another of them holds OUT.partial/ (the one
    lock of the three: each named only some, a finetune's "another protrans finetune" when a fit
    held it); a library call is told its `out_dir`, not -o (`errors.option`)."""
    return (f"is in use by another protrans fit, {option('fit --search', 'search')} or finetune (it holds the lock "
            f"of this head's unfinished state): wait for it to end, or choose another {option('-o', 'out_dir')}")


def _lock_head(held: contextlib.ExitStack, out_dir: Path) -> None:
    """Take the lock on the head's unfinished state for the whole fit, and clear what dead fits left."""
    folder_can_be_made(out_dir.parent)  # (a file on its way: "afile: File exists", exit 1)
    # (`-o heads/ss3` should just work; a fit that fails leaves no empty folder it made itself)
    held.enter_context(folder_made(out_dir.parent))
    # One fit at a time on a head: two at once on one -o (a job started twice) overwrote each
    # other's state, --force deleted the other's under it, and the last one's head replaced the
    # first's without --force. (Also an unwritable folder is found here, not after an epoch.)
    held.enter_context(folder_lock(partial_path(out_dir), head_in_use()))
    _refuse_odd_state(partial_path(out_dir) / FitState.FILE)  # (finetune's state has the same name)
    # The head's temporary folder of a fit killed while writing it (or an old head set aside by
    # --force): every fit of this head holds the lock, so none is a live one's. make_temporary's
    # sweep leaves those of the last hour: the resumed fit left it beside the head it wrote.
    remove_dead_temporaries(out_dir.parent, f".{out_dir.name}.")
    remove_dead_temporaries(out_dir.parent, f".{out_dir.name}.old.", "")  # (replace_directory's)


def _refuse_odd_state(path: Path) -> None:
    """A folder, named pipe, socket or device called HEAD.partial/state.pt is refused before any
    training: a folder failed the first epoch's save ("state.pt.tmp: Is a directory", naming a
    hidden temporary), and a named pipe was taken for no state and replaced, with --resume too.
    (A link there is replaced, never followed: create_fresh.)"""
    if (what := odd_kind(path, follow_symlinks=False)) is not None:
        raise InputError(f"is {what}, not a saved state: an unfinished run keeps its state in a file "
                         "of this name (move it away)", path=str(path))


@dataclass
class _Sets:
    """The training set and every evaluation set, read and checked, with what config.json says of them."""
    task: Task  # with the training labels' classes and outputs
    train: object
    train_labels: LabelSet
    valid: object
    valid_desc: str
    held_out: list[str] | None  # ids of the --valid-fraction hold-out (config.json: the split, recoverable)
    eval_sets: list[tuple[str, object, str, str]]  # (name, data, embeddings, labels)
    embedding_info: dict
    model_layer: int
    folds: list[np.ndarray] | None = None  # --folds: positions in train of each fold


def _read_sets(config: FitConfig, task: Task, embeddings, labels, valid, tests) -> _Sets:
    """Read train, then the validation set (--valid, declared by the label file, or held out of
    train) and the test sets, and check that they can be compared with train."""
    masked: list[bool] = []  # whether --mask applied, file by file
    formats: list[str] = []  # the label files' formats, file by file
    task, train_labels, declared, train, report = _read_train(config, task, embeddings, labels, masked,
                                                              mask_elsewhere=bool(valid or tests), formats=formats)
    embedding_info, model_layer = _embedding_info(config, embeddings)

    eval_sets: list[tuple[str, object, str, str]] = []  # (name, data, embeddings, labels)
    held_out: list[str] | None = None  # ids of the --valid-fraction hold-out (config.json: the split, recoverable)
    folds: list[np.ndarray] | None = None
    same_file_reports = [report]  # the label sets read from the training embeddings
    if config.folds:
        # (the label file's validation records are among train: _read_train)
        folds = cv_folds(config, task, train, labels)
        valid_data = None
        sizes = [_protein_count(train.items, fold) for fold in folds]
        valid_desc = (f"{config.folds}-fold cross-validation of the {_protein_count(train.items):,} training proteins "
                      f"(seed {config.seed}; folds of {min(sizes):,}"
                      + (f" to {max(sizes):,}" if max(sizes) > min(sizes) else "")
                      + " proteins" + (", stratified by class" if _stratum_output(task) else "")
                      + ("; proteins of one sequence in one fold" if _grouped(train) else "") + ")")
    elif valid is not None:
        warn_unused_fraction(config.valid_fraction)
        if VALID in declared:
            console.info(f"{labels}: its validation records are left out of training (--valid gives the "
                         "validation set)")
        valid_data, _, valid_report = _load_eval(config, task, *valid, VALID, masked=masked, formats=formats)
        if same_file(valid[0], embeddings):
            same_file_reports.append(valid_report)
        valid_desc = f"{valid[1]}"
    elif VALID in declared and (loaded := _load_own_split(config, embeddings, train_labels, VALID, task)):
        warn_unused_fraction(config.valid_fraction, labels)
        valid_data, valid_report = loaded
        same_file_reports.append(valid_report)
        valid_desc = f"{labels} (its validation records)"
    else:  # (none declared, or none of them embedded under --only-embedded: _load_own_split)
        train, valid_data, held_out, valid_desc = _hold_out(config, train, labels)
    console.info(f"validation: {valid_desc}")
    if valid_data is not None:  # (--folds: scored out of fold once the members are trained, as "cv")
        eval_sets.append(("valid", valid_data, str(valid[0]) if valid else str(embeddings), valid_desc))
    if not tests and TEST in declared:
        if loaded := _load_own_split(config, embeddings, train_labels, TEST, task):
            test_data, test_report = loaded
            same_file_reports.append(test_report)
            eval_sets.append(("test", test_data, str(embeddings), f"{labels} (SET=test)"))
    elif TEST in declared:
        console.info(f"{labels}: its SET=test records are left out of training (--test gives the test sets)")
    for emb, lab in tests:
        data, name, test_report = _load_eval(config, task, emb, lab, TEST, masked=masked, formats=formats)
        if same_file(emb, embeddings):
            same_file_reports.append(test_report)
        # (with --folds "cv" is taken: a test set of labels cv.csv replaced the cross-validation's scores)
        name = name_of_test_set(lab, name)  # (`--test EMB <(zcat labels.gz)` was named "labels")
        eval_sets.append((_unique_name(name, [s[0] for s in eval_sets] + (["cv"] if folds is not None else [])),
                          data, str(emb), str(lab)))
    if config.mask_path is not None and not any(masked):
        # (training labels in another format were read without it, for a FLIP --valid/--test)
        raise UsageError(f"{option(f'--mask {config.mask_path}', f'mask_path {config.mask_path}')}: none of the "
                         "label files is FLIP-style labels whose ids it holds, the only ones a mask file applies to")
    refuse_unused_mask_columns(config.mask_columns, formats, config.task)
    # (records of the label file in a split no step reads have a label: not reported as without one)
    unused = ({VALID} if valid is not None else set()) | ({TEST} if tests else set())
    set_aside = {escape_key(r.id) for r in train_labels.records if r.split in unused}
    report_unlabelled(embeddings, labels, same_file_reports, "not used", set_aside=set_aside)
    _check_comparable(eval_sets, train, embedding_info, model_layer)
    _warn_overlap(train, eval_sets)
    return _Sets(task, train, train_labels, valid_data, valid_desc, held_out, eval_sets, embedding_info, model_layer,
                 folds)


def piped_label_files(labels, valid, tests) -> list[str]:
    """The label files of a fit that are pipes (`<(zcat x.gz)`, a named pipe; not stdin, which
    --resume compares by the sha256 of its bytes): read once, they cannot be compared on --resume."""
    return piped_files(label_files(labels, valid, tests))


def piped_files(paths) -> list[str]:
    """The inputs among `paths` that are pipes (stdin, `-`, excepted: compared by its bytes)."""
    from protrans_cli.embed import is_stream

    return [str(p) for p in paths if p is not None and str(p) != "-" and is_stream(p)]


def refuse_piped_resume(directory, differ: list, piped: list, command: str, remedy: str) -> None:
    """A usage error where a resume differs in inputs that come from pipes (piped_label_files):
    a pipe (`--labels <(zcat labels.csv.gz)`, a named pipe) names another pipe at each run and
    holds no file to compare, so "run the same command with --resume" sent the user round in a
    circle (fit's and finetune's)."""
    if piped and set(differ) & {"labels", "valid", "tests", "fasta", "labels_file", "valid_files", "test_files",
                                "fasta_file"}:
        raise UsageError(f"{directory} cannot be resumed: its inputs come from a pipe ({', '.join(piped)}), which "
                         f"can be read once and is not a file that can be compared with what the interrupted "
                         f"{command} read; give them as files (a compressed one is read as it is), or {remedy}")


def label_files(labels, valid, tests) -> list:
    """The label files of a fit: the training labels, then those of `valid` and `tests` (pairs of
    embeddings and labels)."""
    return [labels, *(pair[1] for pair in ([valid] if valid else []) + list(tests))]


def warn_unused_fraction(fraction: float, labels=None) -> None:
    """A --valid-fraction other than the default beside a validation set (`--valid`, or the label
    file `labels`'s own validation records) holds nothing out: a warning says it is ignored (it
    was, silently)."""
    if fraction != FitConfig.valid_fraction:
        given = "--valid" if labels is None else f"{labels}'s own validation records"
        console.warn(f"--valid-fraction does nothing with {given} (the validation set; none is held out of train): "
                     "ignored")


def _read_train(config: FitConfig, task: Task, embeddings, labels, masked: list, *, mask_elsewhere: bool,
                formats: list | None = None):
    """(task with its classes and outputs, the label file, the splits it declares, train, its load report)."""
    train_labels = _read(config, labels, mask_elsewhere=mask_elsewhere, masked=masked, formats=formats)
    # A file that assigns its records to splits (FLIP's SET=/VALIDATION=, a table's set column)
    # provides train, and unless --valid/--test are given, validation and test sets too. A
    # record with no split is a training record (DeepLoc's tables leave the set empty for
    # train), as `protrans labels --split train` reads it.
    declared = {r.split for r in train_labels.records if r.split}
    # (--folds: the validation records are cross-validated with the rest of train)
    train_set = _only(train_labels, {None, TRAIN} | ({VALID} if config.folds else set())) if declared \
        else train_labels
    if config.folds and VALID in declared:
        console.info(f"{labels}: its validation records are among the proteins cross-validated (--folds)")
    if not train_set.records:
        raise no_training_records(labels, declared)
    with located(labels):
        task = task.with_classes_from(train_set.records)
    for note in train_labels.notes:
        console.info(f"{train_labels.path}: {note}")
    if warning := unmasked_flip_warning(train_labels, task.output_names):
        console.warn(f"{train_labels.path}: {warning}")
    train, report = _load(config, embeddings, train_set, task)
    console.info(f"train: {console.counted(report.matched, 'protein')} from {embeddings}"
                 + (f" ({report.by_checksum} matched by sequence checksum)" if report.by_checksum else ""))
    if task.kind != PER_RESIDUE:
        task = _outputs_with_labels(task, train, labels)
    return task, train_labels, declared, train, report


def _embedding_info(config: FitConfig, embeddings) -> tuple[dict, int]:
    """What config.json records of the training embeddings, and the model layer learned from."""
    with EmbeddingsReader(embeddings) as reader:
        # (the long-protein policy too: `predict --fasta` embeds long proteins as these were; and what
        # the model saw of a complex, embed --chains: `predict --fasta` reads complexes so by default)
        # (and the hub revision and commit: `predict --fasta` embeds with the weights these came from;
        # a local directory's weights_fingerprint: predict and `predict --fasta` refuse other weights there)
        embedding_info = {k: _jsonable(reader.attrs[k]) for k in ("model", "revision", "commit", "family", "layers",
                                                                  "pooling", "storage_dtype", "embedding_dim",
                                                                  "max_length", "long_policy", "chunk_overlap",
                                                                  "weights_fingerprint", "chains", "linker_length")
                          if k in reader.attrs and reader.attrs[k] is not None
                          and not (isinstance(reader.attrs[k], str) and reader.attrs[k] == "")}
        # the token embed put before every protein (ProstT5's <AA2fold>): "" for none, as in
        # every file written before embed put one there
        embedding_info["input_prefix"] = input_prefix_of(reader.attrs)
        # The model layer learned from, as embed numbers it (what predict and `predict --fasta` use):
        # the default -1 on a file holding one other layer (`embed --layer -2`) reads that layer.
        model_layer = config.layer
        if "layers" in reader.attrs:
            model_layer = int(np.atleast_1d(reader.attrs["layers"])[stored_layer_index(reader, config.layer)])
    return embedding_info, model_layer


MIN_RESAMPLES = 10


def check_resamples(n, what: str) -> None:
    """A bootstrap of fewer than MIN_RESAMPLES resamples is refused: its 2.5th and 97.5th
    percentiles are one or two resamples (`--bootstrap 1` reported Q3 0.3977 with the "95% CI"
    0.3309-0.3309, which does not hold it)."""
    # (knn(n_bootstrap="1000") and evaluate_head(n_boot=100.0) from Python were TypeErrors from
    # inside: "'<' not supported between instances of 'str' and 'int'"; numpy's integers serve)
    if n is not None and not whole_number(n):
        raise UsageError(f"{what} must be a whole number of resamples, got {type(n).__name__} {n!r:.40}")
    if n is not None and n < MIN_RESAMPLES:
        raise UsageError(f"{what} must be at least {MIN_RESAMPLES} (a 95% interval needs resamples beyond its 2.5% "
                         f"tails; 1000 is the default), got {n}")


def held_out_positions(groups: list[list[int]], n_valid: int, seed: int) -> tuple[list[int], list[int]]:
    """(validation, train) positions: whole groups (proteins of one sequence) drawn with `seed`
    until at least `n_valid` proteins are held out; the rest train (fit's and finetune's rule)."""
    order = np.random.default_rng(seed).permutation(len(groups))
    valid_idx: list[int] = []
    cut = 0
    while len(valid_idx) < n_valid:
        valid_idx += groups[order[cut]]
        cut += 1
    return valid_idx, [i for g in order[cut:] for i in groups[g]]


def _hold_out(config: FitConfig, train, labels):
    """(train, validation, its ids, its description): --valid-fraction of train, drawn with --seed."""
    # Proteins of one sequence (CB513 repeats 79; two label records matched to one embedding) are
    # held out together: one on each side put its own twin in the validation set (CB513: 12 of the
    # 51 held out), and early stopping chose the epoch that best recalled training proteins.
    # Without repeats the groups are the proteins, and the split is the one drawn before.
    units = _proteins(train.items)
    total = len(units)
    n_valid = max(1, int(round(config.valid_fraction * total)))
    if total - n_valid < 1:
        if total >= 2:  # (the fraction leaves nothing to train on, not the proteins)
            raise UsageError(f"{given('--valid-fraction', 'valid_fraction', config.valid_fraction)} holds out "
                             f"{n_valid} of the {total} training proteins, leaving none to train on: give a smaller "
                             "fraction")
        raise InputError("too few training proteins to hold out a validation set", path=str(labels))
    for groups in (_sequence_groups(train, units), [[i] for i in range(total)]):
        # (the second, protein by protein, only where the groups leave nothing to train on: a
        # file whose proteins share one sequence but not their rows)
        valid_idx, train_idx = held_out_positions(groups, n_valid, config.seed)
        if train_idx:
            break
    # (positions of the proteins' items: a complex's chains, read as proteins of their own, go together)
    valid_data = subset(train, [i for u in valid_idx for i in units[u]])
    train = subset(train, [i for u in train_idx for i in units[u]])
    held_out = sorted(m.id for m in whole_items(valid_data.items)[0])
    valid_desc = (f"{console.counted(len(valid_idx), 'protein')} held out of train (seed {config.seed}; "
                  f"{len(train_idx):,} left to "
                  "train on" + ("; proteins of one sequence on one side)" if len(groups) < total else ")"))
    return train, valid_data, held_out, valid_desc


def _sequence_groups(train, units: list[list[int]] | None = None) -> list[list[int]]:
    """Proteins (their positions in `units`, `_proteins(train.items)`) grouped by sequence (the
    checksum embed stored; in a file without, that of the label record's sequence; by key where
    neither gives one), in order."""
    # (a file of another tool's that stores no checksums split the two records of one sequence
    # over the folds, 19 of 30 twins, each scored out of fold by a member trained on its twin)
    grouped: dict = {}
    for u, positions in enumerate(_proteins(train.items) if units is None else units):
        m = train.items[positions[0]]
        checksum = m.checksum if m.checksum is not None else m.label_checksum
        grouped.setdefault(checksum if checksum is not None else ("key", m.key), []).append(u)
    return list(grouped.values())


def _proteins(items: list) -> list[list[int]]:
    """The positions in `items` of each protein, in order: one each, a complex's chains (read as
    proteins of their own, one after another: `_load`) together."""
    units: list[list[int]] = []
    for i, item in enumerate(items):
        if isinstance(item, ChainRows) and item.start > 0 and units:
            units[-1].append(i)
        else:
            units.append([i])
    return units


def _protein_count(items: list, positions=None) -> int:
    """How many proteins `items` (those at `positions`) hold, a complex's chains counted once."""
    picked = items if positions is None else [items[i] for i in positions]
    return sum(not (isinstance(item, ChainRows) and item.start > 0) for item in picked)


def _grouped(train) -> bool:
    units = _proteins(train.items)
    return len(_sequence_groups(train, units)) < len(units)


def _stratum_output(task: Task):
    """The output --folds stratifies by: a per-protein task's first class output (loc: the
    location); None per residue (a protein holds every class) and for values."""
    if task.kind == PER_RESIDUE or task.outputs[0].is_value:
        return None
    return task.outputs[0]


def cv_folds(config: FitConfig, task: Task, train, labels) -> list[np.ndarray]:
    """--folds K: the positions in train of each of K folds, drawn with --seed. Proteins of one
    sequence fall in one fold (as the --valid-fraction hold-out keeps them on one side). A
    per-protein class task is stratified: each class's proteins, shuffled, are dealt over the
    folds in turn (a rare class in every fold where it has the proteins); a value task is dealt
    in order of value (each fold spans the range); per residue the proteins are shuffled."""
    k = config.folds
    units = _proteins(train.items)
    groups = _sequence_groups(train, units)
    if len(groups) < k:
        what = "proteins of distinct sequence" if len(groups) < len(units) else "proteins"
        raise InputError(f"{given('--folds', 'folds', k)} needs at least {k:,} training {what}, the set has "
                         f"{len(groups):,}",
                         path=str(labels))
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(groups))
    output = _stratum_output(task)
    if output is not None:
        # (a protein without this label, IGNORE, is a stratum of its own)
        stratum = [int(train.items[units[groups[g][0]][0]].targets[output.name]) for g in range(len(groups))]
        order = sorted(order, key=lambda g: stratum[g])  # stable: shuffled within each class
    elif task.kind != PER_RESIDUE and task.outputs[0].is_value:
        value = [float(train.items[units[groups[g][0]][0]].targets[task.outputs[0].name]) for g in range(len(groups))]
        order = sorted(order, key=lambda g: (np.isnan(value[g]), value[g]))
        # each run of K neighbouring values in a random order: another --seed, other folds
        order = [g for start in range(0, len(order), k) for g in rng.permutation(order[start:start + k])]
    # Dealt in turn, each group to the next fold that holds fewest proteins (in turn exactly where
    # every group is one protein; a pair of identical sequences does not tip one fold over).
    counts = np.zeros(k, dtype=np.int64)
    fold_of = np.empty(len(groups), dtype=np.int64)
    cursor = 0
    for g in order:
        fewest = counts.min()
        j = next(j % k for j in range(cursor, cursor + k) if counts[j % k] == fewest)
        fold_of[g] = j
        counts[j] += len(groups[g])
        cursor = j + 1
    fold_of = rng.permutation(k)[fold_of]  # (which fold is numbered first is drawn too)
    return [np.array(sorted(i for g in np.flatnonzero(fold_of == j) for u in groups[g] for i in units[u]),
                     dtype=np.int64)
            for j in range(k)]


def _check_comparable(eval_sets: list, train, embedding_info: dict, model_layer: int) -> None:
    """Refuse an evaluation set embedded otherwise than train: another dimension, layer or model."""
    from protrans_cli.embed import other_weights, same_model  # (same_model: a directory named two ways, a short
    # name and its hub id; same_weights: its weights at another path)

    for name, data, emb, _ in eval_sets:
        if data.dim != train.dim:
            raise InputError(f"{name} embeddings have dimension {data.dim}, train {train.dim}", path=emb)
        with EmbeddingsReader(emb) as reader:
            other = reader.attrs.get("model")
            differ = other_weights(embedding_info, reader.attrs)
            moved = same_weights(embedding_info, reader.attrs)  # (the model directory's weights at another path)
            if "layers" in embedding_info:  # the layer train was read from, not a lone other one
                stored_layer_index(reader, model_layer, f"train was read from layer {model_layer}: "
                                   f"embed the {name} set with {embed_layer(model_layer)}", exact=True)
            prefix = input_prefix_of(reader.attrs)
            pooling = pooling_kind(reader.attrs.get("pooling"))
        if other and embedding_info.get("model") and not same_model(other, embedding_info["model"]) \
                and not moved:
            raise ModelError(f"{name} embeddings come from model {other!r}, train from {embedding_info['model']!r}",
                             path=emb)
        if differ:  # (one local model directory retrained between the two embed runs)
            raise ModelError(f"{name} embeddings come from other weights of the model directory {other!r} than "
                             f"train's ({differ}: retrained or replaced between the two runs?): embed both with "
                             "the same weights", path=emb)
        if prefix != embedding_info.get("input_prefix", ""):
            theirs = embedding_info.get("input_prefix", "")
            held = three_di_words(prefix, theirs)
            remedy = (f"the {name} set holds embeddings of {held}, train of {three_di_words(theirs, prefix)}: "
                      "embed both from the same kind of sequence" if held
                      else "embed both with the same protrans version")
            raise ModelError(f"{name} embeddings were made {prefix_words(prefix)}, train's "
                             f"{prefix_words(theirs)} (its rows differ): {remedy}", path=emb)
        # (per-protein vectors: a cls token's against means; rows, and the means of rows, are alike)
        theirs = pooling_kind(embedding_info.get("pooling"))
        if isinstance(data, ProteinData) and pooling != theirs:
            raise ModelError(f"{name} embeddings are per-protein vectors pooled by {pooling}, train's by {theirs}: "
                             f"embed the {name} set with --pooling {theirs}", path=emb)


def _warn_overlap(train, eval_sets: list) -> None:
    """Warn of evaluation proteins that are in train too, by id or by sequence, and of test
    proteins that are validation proteins."""
    trained_on = TrainingSet(train.items)
    for name, data, emb, _ in eval_sets:
        _warn_shared(trained_on, name, data, "the training set",
                     "their scores are not independent of training")
    # A test set that is (partly) the validation set: those proteins chose the epoch kept, so the
    # test score is not the unbiased estimate a test set gives (`--valid X --test X` said nothing).
    if eval_sets and eval_sets[0][0] == "valid":
        chose = TrainingSet(eval_sets[0][1].items)
        for name, data, emb, _ in eval_sets[1:]:
            _warn_shared(chose, name, data, "the validation set",
                         "the validation set chose the epoch kept, so their scores are not an independent test")


def _warn_shared(other: "TrainingSet", name: str, data, where: str, consequence: str) -> None:
    """One warning counting `data`'s proteins that are in `other` (by id or by sequence)."""
    proteins = whole_items(data.items)[0]  # (a complex read chain by chain counted once)
    same_id, same_sequence = other.overlap(proteins)
    both = same_id + same_sequence
    if both:
        found = ", ".join(([f"{len(same_id)} by id"] if same_id else [])
                          + ([f"{len(same_sequence)} by an identical sequence"] if same_sequence else []))
        console.warn(f"{name}: {len(both)} of its {len(proteins)} proteins are in {where} too ({found}: "
                     f"{', '.join(both[:3])}{', ...' if len(both) > 3 else ''}); {consequence}")


def _train_ensemble(config: FitConfig, task: Task, train, valid_data, weights, device, state: FitState, *,
                    folds: list[np.ndarray] | None = None):
    """(members, history): the members `state` holds, then the rest trained (the one it was
    training resumed from its last epoch). With `folds` member k trains on the other folds and
    is validated on fold k."""
    import torch

    from protrans_cli.heads.model import build_head

    members, history = [], list(state.history)
    # Each member seeds torch itself (reproducible heads); the caller's generators are put back
    # afterwards, so a notebook's seeded random numbers do not depend on having called fit.
    with _fork_rng(torch, device):
        for saved in state.members:
            model = build_head(task, train.dim, architecture=config.architecture, hidden=config.hidden,
                               kernel=config.kernel, dropout=config.dropout)
            model.load_state_dict(saved)
            members.append(model.to(device).eval())
        for member in range(len(members), config.ensemble):
            seed = config.seed + member
            current = state.current if state.current and state.current["member"] == member else None
            member_train, member_valid, member_weights = train, valid_data, weights
            if folds is not None:
                member_train = fold_training(train, folds, member)
                member_valid = subset(train, folds[member])
                if weights is not None:  # (counted on the folds it trains on: fold k's labels are held out)
                    member_weights = _class_weights(task, member_train)
            model, lines = _train_member(config, task, member_train, member_valid, seed, member, member_weights,
                                         device, state=state, resume_from=current)
            members.append(model)
            history.extend(lines)
            state.finish_member(model, lines)
    return members, history


def fold_training(train, folds: list[np.ndarray], member: int):
    """--folds: the training proteins member `member` trains on (every fold but its own)."""
    return subset(train, np.concatenate([f for j, f in enumerate(folds) if j != member]))


def _write_evaluation(tmp: Path, ensemble, task: Task, history: list[dict], eval_sets: list,
                      config: FitConfig, *, cv: tuple | None = None) -> dict:
    """metrics.jsonl, curves.png and metrics/<set>.json into `tmp`; the headline numbers of every
    set. `cv` (train, folds, embeddings, description): --folds, scored out of fold as set "cv"."""
    (tmp / "metrics").mkdir()
    with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for line in history:
            fh.write(metrics_json(line, indent=None) + "\n")
    if config.plots:
        _plot_curves(history, task, tmp / "curves.png")
    summary = {}
    if cv is not None:
        train, folds, emb, desc = cv
        result = score_out_of_fold(ensemble, task, train, folds, n_boot=config.n_bootstrap,
                                   max_residues=config.max_residues, seed=config.seed)
        summary["cv"] = write_metrics(tmp / "metrics", "cv", result, emb, desc, plots=config.plots)
        for output, m in result.items():  # (metrics/cv.json holds them, with each fold's counts)
            score = "spearman" if m.get("kind") == "value" else "accuracy"
            console.info(f"cv {output}: {m['metric']} per fold "
                         + ", ".join("n/a" if f[score] is None or np.isnan(f[score]) else f"{f[score]:.4f}"
                                     for f in m["folds"]))
    for name, data, emb, lab in eval_sets:
        result = evaluate_data(ensemble, task, data, n_boot=config.n_bootstrap, max_residues=config.max_residues,
                               seed=config.seed)
        summary[name] = write_metrics(tmp / "metrics", name, result, emb, lab, plots=config.plots)
    return summary


def _head_config(config: FitConfig, task: Task, sets: _Sets, weights, fingerprint: dict, embeddings,
                 labels) -> dict:
    """The head's config.json."""
    from protrans_cli.heads.model import head_format, network_hyperparameters

    return {
        "format": "protrans-head", "format_version": head_format(config.architecture), "protrans_version": __version__,
        # `kind` is the task's (what the head predicts); what it reads follows the architecture
        # (model.head_input_kind)
        "task": task.to_json(), "kind": task.kind, "architecture": config.architecture,
        "input_dim": int(sets.train.dim), "embedding": sets.embedding_info, "layer": sets.model_layer,
        "ensemble": config.ensemble, "seeds": [config.seed + i for i in range(config.ensemble)],
        # (hidden, kernel, dropout: null where the architecture has none)
        "hyperparameters": {**network_hyperparameters(task, config.architecture, hidden=config.hidden,
                                                      kernel=config.kernel, dropout=config.dropout),
                            "lr": config.lr, "weight_decay": config.weight_decay,
                            "max_epochs": config.max_epochs, "patience": config.patience,
                            "max_residues": config.max_residues, "batch_size": config.batch_size,
                            "standardise": config.standardise
                            and input_kind(task, config.architecture) != PER_RESIDUE,
                            # (--folds: no member trained with the weights of all of train, so
                            # none here: each member's are training.class_weights_per_member)
                            "class_weights": None if weights is None or sets.folds is not None else
                            {k: v.tolist() for k, v in weights.items()}},
        "training": {"embeddings": str(embeddings), "labels": str(labels),
                     "proteins": _protein_count(sets.train.items),
                     "validation": sets.valid_desc, "notes": sets.train_labels.notes,
                     **({"held_out": sets.held_out} if sets.held_out is not None else {}),
                     # --folds: the ids of each fold (member k was validated on fold k, trained on the rest)
                     # (a complex once, not once a chain)
                     **({"folds": [[m.id for m in whole_items([sets.train.items[i] for i in f])[0]]
                                   for f in sets.folds]}
                        if sets.folds is not None else {}),
                     # (--folds --class-weights: member k's, counted on the folds it trained on)
                     **({"class_weights_per_member": [
                         {name: w.tolist() for name, w in
                          _class_weights(task, fold_training(sets.train, sets.folds, member)).items()}
                         for member in range(len(sets.folds))]}
                        if sets.folds is not None and weights is not None else {})},
        "config": _jsonable({k: v for k, v in asdict(config).items() if k not in ("resume", "force")}),
        "fingerprint": _jsonable(fingerprint),  # what `fit --resume` of the finished head compares
    }


def partial_path(out_dir) -> Path:
    """Where an unfinished fit keeps its state: HEAD_DIR.partial/ next to the head directory."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".partial")


# Settings that do not change what is trained: a resumed fit may differ in these.
_NOT_IN_FINGERPRINT = ("threads", "force", "resume", "device", "n_bootstrap", "cache_bytes", "plots")


def _finished(out_dir: Path, fingerprint: dict) -> FitResult | None:
    """The finished head in `out_dir` when it was made with these settings and inputs (what
    `fit --resume` then has to do: nothing, as `embed --resume` of a finished file); None for
    a head of an older version, which did not record them."""
    try:
        config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
        saved = config["fingerprint"]
        summary = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
        history = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
                   if line.strip()]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    differ = _changed(saved, _jsonable(fingerprint))
    if differ:
        raise UsageError(f"{out_dir} is a finished head made with other settings or inputs ({', '.join(differ)}): "
                         f"{force_option()} replaces it")
    return FitResult(out_dir, summary, history)


def _left_behind(partial: Path, out_dir: Path) -> bool:
    """Whether the state in HEAD.partial/ predates the finished head (the state is removed just
    after the head is renamed into place; a kill in between leaves it), rather than belonging to
    a fit still running or interrupted since."""
    try:
        if not (partial / FitState.FILE).exists():
            # Emptied by a kill between the state's removal and the folder's (or holding only a
            # state that was being written): nothing of a fit is in it.
            return all(p.name == FitState.FILE + ".tmp" for p in partial.iterdir())
        return (partial / FitState.FILE).stat().st_mtime_ns <= (out_dir / "metrics.json").stat().st_mtime_ns
    except OSError:
        return False


def _changed(saved: dict, now: dict) -> list[str]:
    """The fingerprint keys whose values differ (or that one side lacks). Input paths compare as
    the files they name: `--resume` from another folder, or through a link, names the same
    inputs in other words (fingerprints saved before held the paths as typed: they are read
    from the current folder). A fingerprint saved before heads had an architecture used its
    task's default, which it is compared as."""
    def value(fp: dict, key: str):
        return _real_paths(fp.get(key)) if key in _PATH_KEYS else fp.get(key)

    if "architecture" not in saved and isinstance(saved.get("task"), str) and saved["task"] in TASKS:
        saved = {**saved, "architecture": architecture_for(TASKS[saved["task"]])}

    keys = set(saved) | set(now)
    if now.get("valid") is not None or ("valid_fraction" in saved and saved["valid_fraction"] is None):
        # (a --valid set holds nothing out of train: another --valid-fraction changes nothing, and
        # `--valid V --valid-fraction 0.3` then --resume without it was refused "other settings";
        # None: the saved run's label file declared its validation records, and held nothing out)
        keys.discard("valid_fraction")
    if saved.get("architecture") == now.get("architecture"):
        # (options of another kind of head change nothing, as fit warns: `--kernel 5` given to an
        # FNN, then left out of --resume as the warning suggests, was refused "other settings")
        task = now.get("task")
        keys -= set(unused_options(task, now["architecture"]) if task in TASKS
                    else UNUSED_OPTIONS.get(now.get("architecture"), ()))
    if not recorded_files(saved):
        # (a state or head of a version before the files were recorded: compared by name, as
        # that version did; counted as changed, it was refused "made with other settings or
        # inputs (embeddings_file, labels_file, ...)" after the same command)
        keys -= set(_FILE_KEYS)
    else:
        # An input moved or copied with its time (a project folder renamed, `mv`, `cp -a`, `rsync -a`):
        # the same size and modification time at another path is the same file; it was refused
        # "made with other settings or inputs (embeddings)" after the same command with the new path.
        keys -= {path_key for path_key, file_key in _FILE_OF_PATH.items()
                 if _all_known(saved.get(file_key)) and saved.get(file_key) == now.get(file_key)}
    return sorted(k for k in keys if value(saved, k) != value(now, k))


def _all_known(identity) -> bool:
    """Whether a recorded input identity (a file's [size, mtime], nested in lists for several
    files, or a folder's {name: [size, mtime]}) names every file (no None: a file that was not
    there, or none given)."""
    if isinstance(identity, dict):
        return bool(identity) and all(_all_known(v) for v in identity.values())
    if isinstance(identity, list) and identity and all(isinstance(v, list) for v in identity):
        return all(_all_known(v) for v in identity)
    return isinstance(identity, list) and len(identity) == 2 and all(isinstance(v, int) for v in identity)


_PATH_KEYS = ("embeddings", "labels", "valid", "tests", "mask_path")
# each input path's key and the key of its files' identity (size and modification time); finetune's
# fingerprint names its sequences, its mask and a local model folder so (finetune's _fingerprint)
_FILE_OF_PATH = {"embeddings": "embeddings_file", "labels": "labels_file", "valid": "valid_files",
                 "tests": "test_files", "mask_path": "mask_file",
                 "fasta": "fasta_file", "mask": "mask_file", "model": "model_files"}
# What the fingerprint records of the input files themselves (size and modification time).
_FILE_KEYS = ("embeddings_file", "labels_file", "valid_files", "test_files", "mask_file")


def recorded_files(fingerprint: dict) -> bool:
    """Whether a saved fingerprint records its input files (versions before 2026-11-29 did not)."""
    return any(key in fingerprint for key in _FILE_KEYS)


def _real_paths(value):
    """A path (or nested lists of them) as the file it names; '-' (stdin) and None as they are."""
    if isinstance(value, list):
        return [_real_paths(v) for v in value]
    return value if value in (None, "-") else os.path.realpath(value)


def _fingerprint(config: FitConfig, embeddings, labels, valid, tests, stdin: str | None = None) -> dict:
    settings = {k: v for k, v in _jsonable(asdict(config)).items() if k not in _NOT_IN_FINGERPRINT}
    if config.folds:  # (--folds holds nothing out: another --valid-fraction changes nothing, as fit warns)
        settings.pop("valid_fraction", None)
    inputs = {"embeddings": str(embeddings), "labels": str(labels),
              "valid": [str(p) for p in valid] if valid else None, "tests": [[str(p) for p in t] for t in tests]}
    inputs = {key: _real_paths(paths) for key, paths in inputs.items()}
    # The files themselves, not only their names: labels rewritten at the same path between the
    # interruption and --resume would train one head on two label sets.
    contents = {"embeddings_file": _identity(embeddings), "labels_file": _identity(labels, stdin),
                "valid_files": [_identity(p, stdin) for p in valid] if valid else None,
                "test_files": [[_identity(p, stdin) for p in t] for t in tests], "mask_file": _identity(config.mask_path)}
    return {**settings, **inputs, **contents}


def _identity(path, stdin: str | None = None) -> list[int] | str | None:
    """(size, modification time in ns) of an input file; for stdin `stdin` (the sha256 of its
    bytes, stdin_digest); None for no file."""
    if path is not None and str(path) == "-":
        return stdin
    if path is None or not Path(path).is_file():
        return None
    info = Path(path).stat()
    return [info.st_size, info.st_mtime_ns]


STATE_MAGIC = b"protrans-fit-state sha256:"


def checked_state_bytes(payload: bytes) -> bytes:
    """A saved state's bytes behind a line with their sha256 (fit's and finetune's state.pt)."""
    return STATE_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def load_checked_state(path: Path, what: str, remedy: str):
    """A state.pt read back: its sha256 checked first (torch.load verifies nothing, and bytes
    changed on disk, bit rot or a bad network file system, resumed into another head without a
    word), then torch.load(weights_only=True). Files of older versions (no line) are read as they are."""
    import torch

    data = path.read_bytes()
    if data.startswith(STATE_MAGIC):
        header, _, data = data.partition(b"\n")
        if hashlib.sha256(data).hexdigest().encode() != header[len(STATE_MAGIC):]:
            raise InputError(f"the saved {what} state is damaged (its bytes no longer match their sha256); {remedy}",
                             path=str(path))
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable state is the same problem
        why = torch_load_problem(exc) or f"{type(exc).__name__}: {first_line(exc)}"
        raise InputError(f"cannot read the saved {what} state ({why}); {remedy}", path=str(path)) from None


class FitState:
    """The resumable state of a fit, rewritten atomically after every epoch into
    HEAD_DIR.partial/state.pt: finished members' weights, the current member's weights, Adam state,
    random generators, early-stopping bookkeeping and history. `--resume` continues from it and
    gives the head an uninterrupted run gives (bit for bit on the CPU); it is removed once the head
    directory is written. Read back with torch.load(weights_only=True), after the sha256 of its
    bytes (a header line) is checked: torch.load verifies nothing, and bytes changed on disk
    (bit rot, a bad network file system) resumed into a different head without a word."""

    FILE = "state.pt"
    MAGIC = STATE_MAGIC

    def __init__(self, directory: Path, fingerprint: dict):
        self.directory = directory
        self.fingerprint = fingerprint
        self.members: list[dict] = []   # finished members' (best) weights, on the CPU
        self.history: list[dict] = []   # their metrics lines
        self.current: dict | None = None  # the member in training, as of its last finished epoch

    @classmethod
    def open(cls, directory: Path, fingerprint: dict, *, resume: bool, force: bool,
             piped: list | None = None) -> "FitState":
        """`piped`: the label files that are pipes (piped_label_files), named when a resume is refused."""
        state = cls(directory, fingerprint)
        path = directory / cls.FILE
        if path.is_file() and not resume:
            if not force:
                raise UsageError(f"{directory} holds an interrupted fit: add {resume_option()} to continue it, "
                                 f"or {force_option()} to start over")
            state.remove(keep_folder=True)  # (the folder holds this fit's lock: removed, a second fit took a new one)
        if resume and path.is_file():
            saved = load_checked_state(path, "fit", f"{force_option()} starts over")
            entries = {"fingerprint": dict, "members": list, "history": list}
            if not isinstance(saved, dict) or any(not isinstance(saved.get(k), t) for k, t in entries.items()) \
                    or not isinstance(saved.get("current"), (dict, type(None))):
                raise InputError("the saved fit state lacks entries a fit writes (not a state protrans wrote); "
                                 f"{force_option()} starts over", path=str(path))
            differ = _changed(saved["fingerprint"], fingerprint)
            refuse_piped_resume(directory, differ, piped, "fit", f"{force_option()} starts over")
            if differ:
                raise UsageError(f"{directory} was made with other settings or inputs ({', '.join(differ)}): "
                                 f"{same_settings_with_resume()}, or {force_option()} to start over")
            if not recorded_files(saved["fingerprint"]):
                console.warn(f"{directory} was saved by an earlier version, which recorded the input files by name "
                             "only: resumed on the files now at those paths")
            state.members, state.history, state.current = saved["members"], saved["history"], saved["current"]
            where = f"member {state.current['member']} after epoch {state.current['epoch']}" if state.current \
                else f"{len(state.members)} member(s) finished"
            console.info(f"resuming from {directory}: {where}")
        elif resume:
            console.info(f"nothing to resume in {directory}: starting from the beginning")
        return state

    def save_epoch(self, current: dict) -> None:
        self.current = current
        self._write()

    def finish_member(self, model, lines: list[dict]) -> None:
        self.members.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        self.history.extend(lines)
        self.current = None
        self._write()

    def _write(self) -> None:
        import torch

        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / (self.FILE + ".tmp")
        buffer = io.BytesIO()
        torch.save({"fingerprint": self.fingerprint, "members": self.members, "history": self.history,
                    "current": self.current}, buffer)
        payload = buffer.getvalue()
        # Created afresh and exclusively, never through a link: write_bytes followed a link
        # planted under this fixed name (HEAD.partial/ beside a head in a shared folder) and
        # overwrote the file it pointed to with the state.
        try:
            with open(create_fresh(tmp), "wb") as fh:
                fh.write(checked_state_bytes(payload))
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # (the state written before stays whole)
            if (reason := disk_full(exc)) is not None:
                raise RuntimeFailure(f"cannot save the fit's state: {reason}", path=str(self.directory / self.FILE)) \
                    from None
            raise
        os.replace(tmp, self.directory / self.FILE)

    def remove(self, keep_folder: bool = False) -> None:
        # Only what this class wrote: never a directory's other contents.
        for name in (self.FILE, self.FILE + ".tmp"):
            (self.directory / name).unlink(missing_ok=True)
        if not keep_folder:
            with contextlib.suppress(OSError):
                self.directory.rmdir()


def head_device(device: str = "auto"):
    """The torch device heads train and predict on: `auto` is a CUDA GPU (or Apple's MPS) when
    there is one, else the CPU. Heads run in float32 everywhere (they are small; the embeddings
    and the data reading dominate)."""
    import torch

    from protrans_cli.embed import resolve_device

    return torch.device(resolve_device(device, "float32" if device in ("auto", "cpu") else "auto")[0])


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _read(config: FitConfig, path, *, evaluation: bool = False, mask_elsewhere: bool = False,
          masked: list | None = None, formats: list | None = None) -> LabelSet:
    """A label file as the fit's settings say. An evaluation set (--valid, --test) may be in another
    format than the training labels (train on FLIP's masked split, test on CB513's NetSurfP CSV,
    or the reverse): the FLIP --mask applies to it where it is FLIP-style and the mask holds its
    ids, and to the training labels where they are (`mask_elsewhere`: else read without it).
    `masked` collects whether the mask applied to the file."""
    label_set = read_labels(path, config.label_format, mask_path=config.mask_path,
                            mask_columns=config.mask_columns, mask_optional=evaluation,
                            mask_elsewhere=mask_elsewhere)
    if masked is not None:
        masked.append(any(r.mask is not None for r in label_set.records) and label_set.format == "flip")
    if formats is not None:
        formats.append(label_set.format)
    note_dual_labels(label_set, config.task, config.dual)
    return label_set


def note_dual_labels(label_set: LabelSet, task_name: str, dual: str) -> None:
    """Says how many records carry a dual label (DeepLoc's Cytoplasm-Nucleus) that --dual first
    counts as one location (fit's and finetune's label files)."""
    if dual == "first" and "loc" in get_task(task_name).output_names:
        # (DeepLoc's 23 Cytoplasm-Nucleus proteins became Cytoplasm without a word; --dual skip said so)
        counts = collections.Counter(value for r in label_set.records
                                     if (value := r.labels.get("loc", r.labels.get("label"))) in DUAL_LABELS)
        for value, count in sorted(counts.items()):
            console.info(f"{label_set.path}: {count} record(s) labelled {value} count as {DUAL_LABELS[value]} "
                         "(--dual first; --dual skip leaves them out)")


def _outputs_with_labels(task: Task, train: ProteinData, labels) -> Task:
    """The task without the outputs that no training protein has a label for (a `loc` head from an
    `id,label` table has no membrane labels): such an output's layer would never be trained, yet
    predict would write its guesses and validation would average its empty score in. One output
    at least is kept: `train` holds only proteins with a label (match_labels and finetune's
    to_data leave out the others, and refuse a set of none)."""
    kept = []
    for output in task.outputs:
        target = np.asarray(train.targets[output.name])
        if (~np.isnan(target)).any() if output.is_value else (target != IGNORE).any():
            kept.append(output)
        else:
            console.info(f"{labels}: no training protein has a {output.name} label; the head has no "
                         f"{output.name} output")
    return replace(task, outputs=tuple(kept))


def _only(label_set: LabelSet, splits: set) -> LabelSet:
    return replace(label_set, records=[r for r in label_set.records if r.split in splits])


def no_training_records(labels, declared: set) -> InputError:
    """The error for a label file without a training record, saying why where the file assigns
    its records to other splits (fit's and finetune's alike)."""
    why = (f": the file assigns every record to {', '.join(sorted(declared))} (give the training labels as "
           "--labels)") if declared else ""
    return InputError(f"no training records{why}", path=str(labels))


def evaluation_records(label_set: LabelSet, split: str, labels, command: str = "fit") -> LabelSet:
    """The records of an evaluation file (--valid, --test) to use: those of `split` where the file
    assigns several splits, else all of them. A file of several splits but none of `split` is
    refused: used whole, a DeepLoc FASTA of training and test records given as --valid chose
    the epoch on the test proteins (and on training ones); a FLIP file without VALIDATION=True
    records, likewise."""
    splits = {r.split for r in label_set.records}
    if len(splits) <= 1:
        return label_set
    if split not in splits:
        option = "--valid" if split == VALID else "--test"
        held = ", ".join(sorted(s or TRAIN for s in splits))
        remedy = (f"give {option} a file of validation records, or leave it out: {command} holds out --valid-fraction "
                  "of train" if split == VALID else f"give {option} a file of test records")
        raise InputError(f"assigns its records to {held} and none to {split}: as {option} it would mix them "
                         f"({remedy})", path=str(labels))
    return _only(label_set, {split})


def _load_eval(config: FitConfig, task: Task, embeddings, labels, split: str, *, masked: list | None = None,
               formats: list | None = None):
    """Data of an evaluation set; a label file that assigns splits contributes only `split`'s records."""
    label_set = _read(config, labels, evaluation=True, masked=masked, formats=formats)
    for note in label_set.notes:
        console.info(f"{label_set.path}: {note}")
    if warning := unmasked_flip_warning(label_set, task.output_names):
        console.warn(f"{label_set.path}: {warning}")
    label_set = evaluation_records(label_set, split, labels)
    data, report = _load(config, embeddings, label_set, task, evaluating=True)
    return data, label_set.name, report


def own_split_note(split: str, path, arguments: str) -> str:
    """What a problem of the training label file's own validation or test records adds to say
    which records they are (fit's and finetune's): " (the test records of FILE, used as the test
    set since no --test is given; --test ARGUMENTS names another)"."""
    flag = "--valid" if split == VALID else "--test"
    return (f" (the {split} records of {path}, used as the {split} set since no {flag} is given; {flag} "
            f"{arguments} names another)")


def _load_split(config: FitConfig, embeddings, label_set: LabelSet, split: str, task: Task):
    """The data of the training label file's own validation or test records. Their problems say
    which records they are: "no label record matched" alone read as if the training set had
    failed (the bio_embeddings DeepLoc table's test records, embedded in another file)."""
    try:
        return _load(config, embeddings, _only(label_set, {split}), task, evaluating=True)
    except InputError as exc:
        exc.message += own_split_note(split, label_set.path, "EMBEDDINGS LABELS")
        # (NothingMatched kept: _load_own_split tells it from the other problems)
        if isinstance(exc, NothingMatched):
            raise NothingMatched(exc.message, path=exc.path, record=exc.record, line=exc.line,
                                 report=exc.report) from None
        raise InputError(exc.message, path=exc.path, record=exc.record, line=exc.line) from None


def _load_own_split(config: FitConfig, embeddings, label_set: LabelSet, split: str, task: Task):
    """The data of the training label file's own validation or test records (_load_split), or
    None where --only-embedded or --skip-mismatched is given and none of them is left: the user
    asked for what is embedded (or matches), so the fit goes on without them, a warning saying
    what was left out: without a test set, or with --valid-fraction of train held out for
    validation, as when the file has no validation records (it stopped with "no label record
    matched", after the user had embedded only the training proteins). A --valid or --test set
    matching nothing stays an error, as does the same file read without either option."""
    try:
        return _load_split(config, embeddings, label_set, split, task)
    except NothingMatched:
        if config.on_mismatch not in ("missing", "skip"):
            raise
    records = console.counted(len(_only(label_set, {split}).records), "test record" if split == TEST
                              else "validation record")
    flag = "--only-embedded" if config.on_mismatch == "missing" else "--skip-mismatched"
    if config.on_mismatch == "missing":
        none = f"none of its {records} has an embedding in {embeddings}"
    else:  # (which mismatch each was: the warning of the records skipped, above)
        none = f"none of its {records} matches an embedding in {embeddings} (skipped, above)"
    if split == TEST:
        console.warn(f"{label_set.path}: {none}: no test set is scored ({flag}; --test EMBEDDINGS LABELS gives one)")
    else:
        console.warn(f"{label_set.path}: {none}: --valid-fraction {config.valid_fraction:g} of train is held out "
                     f"for validation instead ({flag}; --valid EMBEDDINGS LABELS gives a validation set)")
    return None


def _load(config: FitConfig, embeddings, label_set: LabelSet, task: Task, *, evaluating: bool = False):
    """The embeddings of the labelled proteins, read as the fit's settings say (load_data: a
    complex's chains as proteins of their own for a per-residue head, one group in the hold-out and
    folds; evaluation scores the complex whole, `_predicted_proteins`)."""
    return load_data(embeddings, label_set, task, kind=input_kind(task, config.architecture),
                     on_mismatch=config.on_mismatch, layer=config.layer, cache_bytes=config.cache_bytes,
                     evaluating=evaluating)


def _fork_rng(torch, device):
    """torch.random.fork_rng over the CPU's generator and the device's: CUDA's, or Apple's MPS
    one (whose dropout draws were left out, so a library fit on a Mac changed its caller's)."""
    if device.type == "cuda":
        return torch.random.fork_rng(devices=[device])
    if device.type == "mps":
        return torch.random.fork_rng(devices=[0], device_type="mps")
    return torch.random.fork_rng(devices=[])


def _unique_name(name: str, taken: list[str]) -> str:
    """`name`, or `name-2`, `name-3`...: one no other evaluation set has, compared without case
    (its metrics files are named after it, and on macOS's and Windows' file systems
    `DeepLoc.json` and `deeploc.json` are one file: the second set replaced the first's)."""
    folded = {t.casefold() for t in taken}
    out, i = name, 2
    while out.casefold() in folded:
        out, i = f"{name}-{i}", i + 1
    return out


def _class_weights(task: Task, train) -> dict:
    """Inverse-frequency weights n / (k * count_c) per output, from the counted training labels."""
    import torch

    weights = {}
    for output in task.outputs:
        k = len(output.classes)
        counts = np.zeros(k, dtype=np.float64)
        for item in train.items:
            t = np.atleast_1d(item.targets[output.name])
            t = t[t >= 0]
            counts += np.bincount(t, minlength=k)
        w = counts.sum() / (k * np.maximum(counts, 1))
        weights[output.name] = torch.tensor(w, dtype=torch.float32)  # moved to the device by the caller
    return weights


def _batches(data, config: FitConfig, shuffle: bool, rng=None):
    if isinstance(data, ProteinData):
        return data.batches(config.batch_size, shuffle=shuffle, rng=rng)
    return data.batches(config.max_residues, shuffle=shuffle, rng=rng)


def _loss(task: Task, logits: dict, targets: dict, weights: dict | None, parts: dict | None = None):
    """Sum over outputs of the mean loss over counted positions (cross-entropy for a class output,
    squared error on z-scores for a value output); and the count per output. `parts`, if given,
    receives each output's mean loss (a tensor) by name."""
    import torch.nn.functional as F

    total, counts = 0.0, {}
    for output in task.outputs:
        t = targets[output.name].reshape(-1)  # (B*L,) or (B,)
        if output.is_value:  # mean squared error on z-scores, over the proteins with a value
            keep = ~t.isnan()
            counts[output.name] = n = int(keep.sum())
            if n:
                mean, std = output.scale
                part = F.mse_loss(logits[output.name].reshape(-1)[keep], (t[keep] - mean) / std)
                total = total + part
                if parts is not None:
                    parts[output.name] = part
            continue
        z = logits[output.name].reshape(t.shape[0], -1)  # (B*L, C)
        n = int((t != IGNORE).sum())
        counts[output.name] = n
        if n:
            w = None if weights is None else weights[output.name]
            part = F.cross_entropy(z, t, weight=w, ignore_index=IGNORE)
            total = total + part
            if parts is not None:
                parts[output.name] = part
    return total, counts


def _train_member(*args, **kwargs):
    """One member trained (_train_one), with gradients on whatever the caller set
    (torch.set_grad_enabled(False) in an inference notebook: the first backward pass failed)."""
    import torch

    with torch.enable_grad():
        return _train_one(*args, **kwargs)


def _train_one(config: FitConfig, task: Task, train, valid, seed: int, member: int, weights, device=None,
               state: FitState | None = None, resume_from: dict | None = None):
    import torch

    from protrans_cli.heads.model import build_head

    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_head(task, train.dim, architecture=config.architecture, hidden=config.hidden, kernel=config.kernel,
                       dropout=config.dropout)
    if isinstance(train, ProteinData) and config.standardise:
        model.standardise_with(torch.from_numpy(train.x))
    model.to(device)
    if weights is not None:
        weights = {k: v.to(device) for k, v in weights.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # The kept state is the one with the best validation accuracy (lower loss breaks ties); patience
    # counts epochs that improve neither accuracy nor loss, so a head whose accuracy sits on the
    # majority class while its loss still falls keeps training.
    best_score, best_loss, best_state, best_epoch, last_progress, lines = float("-inf"), float("inf"), None, 0, 0, []
    # The validation loss of the kept epoch: a tie in accuracy is broken against it. Compared with
    # best_loss (the lowest loss of any epoch) instead, a tied later epoch with a lower loss than
    # the kept one lost to it whenever another epoch had had a lower loss still.
    kept_loss = float("inf")
    first_epoch, stopped = 1, False
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        rng.bit_generator.state = json.loads(resume_from["numpy_rng"])
        torch.set_rng_state(resume_from["torch_rng"])
        # dropout on a GPU draws from the device's generator: without it the resumed epochs
        # replayed the first epoch's masks (manual_seed above reset it)
        if device.type == "cuda" and resume_from.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resume_from["cuda_rng"], device)
        elif device.type == "mps" and resume_from.get("mps_rng") is not None:
            torch.mps.set_rng_state(resume_from["mps_rng"])
        best_state = {k: v.to(device) for k, v in resume_from["best_state"].items()}
        best_score, best_loss, best_epoch = resume_from["best_score"], resume_from["best_loss"], resume_from["best_epoch"]
        kept_loss = resume_from.get("kept_loss", best_loss)  # states saved before it was kept
        last_progress, lines, stopped = resume_from["last_progress"], list(resume_from["lines"]), resume_from["stopped"]
        first_epoch = resume_from["epoch"] + 1
    for epoch in range(first_epoch, config.max_epochs + 1):
        if stopped:
            break
        start, cpu_start = time.perf_counter(), time.process_time()
        model.train()
        loss_sum, batches = 0.0, 0
        for batch in console.progress(_batches(train, config, True, rng), desc=f"member {member} epoch {epoch}",
                                      unit="batch"):
            batch = batch.to(device)
            logits = model(batch.x, batch.mask)
            loss, counts = _loss(task, logits, batch.targets, weights)
            if not any(counts.values()):
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()  # summed on the device: no synchronisation per batch
            batches += 1
        loss_sum = float(loss_sum)
        train_seconds = time.perf_counter() - start
        train_cpu_seconds = time.process_time() - cpu_start  # all threads; robust to a busy machine
        valid_loss, valid_acc = _validate(model, task, valid, config)
        # An epoch with nothing to score (a value head's constant predictions: no rho) ranks below
        # every scored epoch, and such epochs among themselves go by the loss; scored 0.0 it beat
        # an earlier epoch with a negative rho.
        score = float(np.mean(list(valid_acc.values()))) if valid_acc else float("-inf")
        line = {"member": member, "seed": seed, "epoch": epoch, "train_loss": loss_sum / max(batches, 1),
                "valid_loss": valid_loss, **{f"valid_{k}": v for k, v in valid_acc.items()},
                "train_seconds": round(train_seconds, 3), "train_cpu_seconds": round(train_cpu_seconds, 3),
                "seconds": round(time.perf_counter() - start, 3)}
        lines.append(line)
        improved = score > best_score or (score == best_score and valid_loss < kept_loss)
        if improved:
            best_score, best_epoch, kept_loss = score, epoch, valid_loss
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if improved or valid_loss < best_loss:
            last_progress = epoch
        best_loss = min(best_loss, valid_loss)
        console.info(f"member {member} epoch {epoch}: train loss {line['train_loss']:.4f}, valid loss "
                     f"{valid_loss:.4f}, " + ", ".join(f"{k} {v:.4f}" for k, v in valid_acc.items())
                     + f" ({line['seconds']:.1f} s){' *' if improved else ''}")
        stopped = epoch - last_progress >= config.patience
        if state is not None:
            state.save_epoch({
                "member": member, "epoch": epoch, "stopped": stopped,
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "numpy_rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "mps_rng": torch.mps.get_rng_state() if device.type == "mps" else None,
                "best_state": {k: v.cpu() for k, v in best_state.items()},
                "best_score": best_score, "best_loss": best_loss, "best_epoch": best_epoch, "kept_loss": kept_loss,
                "last_progress": last_progress, "lines": lines})
        if stopped:
            break
    model.load_state_dict(best_state)
    model.eval()
    # the score is the mean of the outputs' headline metrics (Spearman for a value head)
    scored = any(k.startswith("valid_") and k != "valid_loss" for line in lines for k in line)
    console.info(f"member {member}: best validation epoch {best_epoch} "
                 + (f"(mean {_metric_names(task)} {best_score:.4f})" if scored
                    else f"(by validation loss {kept_loss:.4f}: no {_metric_names(task)} to score)"))
    return model, lines


def _validate(model, task: Task, data, config: FitConfig) -> tuple[float, dict]:
    import torch

    model.eval()
    device = next(model.parameters()).device
    # Each output's loss summed over its counted positions and divided by their count, then added
    # over outputs: the training loss's quantity over the whole set. (Summing each batch's total
    # weighted by all outputs' counts together mixed the outputs' means wherever their counts
    # differ, as loc's location and membrane do: U proteins count for one and not the other.)
    loss_sums = {o.name: 0.0 for o in task.outputs}
    loss_counts = {o.name: 0 for o in task.outputs}
    correct = {o.name: 0 for o in task.outputs}
    total = {o.name: 0 for o in task.outputs}
    # outputs kept by MCC (Output.select): their confusion matrices
    confusion = {o.name: np.zeros((len(o.classes), len(o.classes)), dtype=np.int64) for o in task.outputs
                 if o.select == "mcc"}
    values = {o.name: ([], []) for o in task.outputs if o.is_value}  # predicted z, true z
    with torch.no_grad():
        for batch in _batches(data, config, False):
            batch = batch.to(device)
            logits = model(batch.x, batch.mask)
            parts: dict = {}
            _, counts = _loss(task, logits, batch.targets, None, parts)
            for name, part in parts.items():
                loss_sums[name] += float(part) * counts[name]
                loss_counts[name] += counts[name]
            for name, z in logits.items():
                t = batch.targets[name]
                if name in values:
                    keep = ~t.isnan()
                    values[name][0].append(z.reshape(-1)[keep].cpu().numpy())
                    values[name][1].append(t[keep].cpu().numpy())
                    continue
                keep = t != IGNORE
                predicted = z.argmax(-1)[keep]
                correct[name] += int((predicted == t[keep]).sum())
                total[name] += int(keep.sum())
                if name in confusion:
                    confusion[name] += confusion_matrix(t[keep].cpu().numpy(), predicted.cpu().numpy(),
                                                        len(confusion[name]))
    # An output with nothing to score in the validation set is left out (not a 0 averaged into
    # the early-stopping score).
    scores = {k: (mcc(confusion[k]) if k in confusion else correct[k] / total[k]) for k in correct if total[k]}
    for name, (predicted, true) in values.items():  # value outputs: Spearman's rho, as evaluated
        if predicted and sum(len(p) for p in predicted) >= 2:
            rho = spearman(np.concatenate(predicted), np.concatenate(true))
            if not np.isnan(rho):  # (constant predictions or targets: no rho; early stopping goes by the loss)
                scores[name] = rho
    loss = sum(loss_sums[k] / loss_counts[k] for k in loss_sums if loss_counts[k])
    return float(loss), scores


def predict_data(ensemble, task: Task, data, *, max_residues: int = 8192, batch_size: int = 256):
    """Mean ensemble probabilities per item, in item order: {output: [ (L, C) or (C,) arrays ]}."""
    out = {o.name: [None] * len(data.items) for o in task.outputs}
    batches = (data.batches(batch_size) if isinstance(data, ProteinData) else data.batches(max_residues))
    device = next(ensemble.parameters()).device
    for batch in batches:
        batch = batch.to(device)
        probs = ensemble.probabilities(batch.x, batch.mask)
        for name, p in probs.items():
            p = p.cpu().numpy()
            for row, i in enumerate(batch.index):
                out[name][i] = p[row, :data.items[i].length] if p.ndim == 3 else p[row]
    return out


def evaluate_data(ensemble, task: Task, data, *, n_boot: int = 1000, max_residues: int = 8192, seed: int = 0) -> dict:
    """{output: metrics dict} of an ensemble on matched data."""
    items, kept = _predicted_proteins(ensemble, task, data, max_residues)
    return score_predictions(task, items, kept, n_boot=n_boot, seed=seed)


def _predicted_proteins(ensemble, task: Task, data, max_residues: int) -> tuple[list, dict]:
    """(the proteins of `data`, `kept_for_scoring` of their predictions): a complex read chain by
    chain (`_load`) is scored as one protein of all its chains' residues, as `predict --labels`
    scores it."""
    probs = predict_data(ensemble, task, data, max_residues=max_residues)
    items, chains = whole_items(data.items)
    return items, kept_for_scoring(task, joined_chains(probs, items, chains))


def score_out_of_fold(ensemble, task: Task, train, folds: list[np.ndarray], *, n_boot: int = 1000,
                      max_residues: int = 8192, seed: int = 0) -> dict:
    """{output: metrics dict} of cross-validation: every training protein predicted by the one
    member (member k of `ensemble`) that did not train on its fold, scored together."""
    from protrans_cli.heads.model import Ensemble

    items: list = []
    kept = {o.name: [] for o in task.outputs}
    per_fold = []
    for member, positions in zip(ensemble.members, folds):
        part = subset(train, positions)
        part_items, fold_kept = _predicted_proteins(Ensemble([member], task), task, part, max_residues)
        items += part_items
        for name, values in fold_kept.items():
            kept[name] += values
        # (each fold's own score, without its CI: the spread over the folds, as biotrainer reports it)
        per_fold.append(score_predictions(task, part_items, fold_kept, n_boot=MIN_RESAMPLES, seed=seed))
    result = score_predictions(task, items, kept, n_boot=n_boot, seed=seed)
    for output in task.outputs:
        score = "spearman" if output.is_value else "accuracy"
        result[output.name]["folds"] = [{"fold": k, score: fold[output.name].get(score),
                                         "n": fold[output.name].get("n"), "n_proteins": fold[output.name].get("n_proteins")}
                                        for k, fold in enumerate(per_fold)]
    return result


def kept_for_scoring(task: Task, probs: dict) -> dict:
    """What the metrics need of `predict_data`'s probabilities: per protein, the predicted class
    of each class output (an (L,) array per residue, a number per protein) and the (1,) value of
    each value output. (A proteome's per-residue probabilities are not held to be scored.)"""
    return {o.name: [p if o.is_value else p.argmax(-1) for p in probs[o.name]] for o in task.outputs}


def score_predictions(task: Task, items: list, predicted: dict, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """{output: metrics dict} of `predicted` (`kept_for_scoring`, in the order of `items`)
    against the targets of the matched `items`."""
    # The bootstrap resamples proteins by position: in order of their ids, so that one set read
    # from two files (another order) gets one CI, not [0.300, 0.410] and [0.300, 0.4067].
    by_id = sorted(range(len(items)), key=lambda i: items[i].id)
    result = {}
    for output in task.outputs:
        if output.is_value:
            y_true = np.array([item.targets[output.name] for item in items], dtype=np.float64)
            y_pred = np.array([p[0] for p in predicted[output.name]], dtype=np.float64)
            result[output.name] = {**evaluate_values(y_true[by_id], y_pred[by_id], n_boot=n_boot, seed=seed),
                                   "true": y_true.tolist(), "predicted": y_pred.tolist()}
            continue
        y_true = [np.atleast_1d(items[i].targets[output.name]) for i in by_id]
        y_pred = [np.atleast_1d(predicted[output.name][i]) for i in by_id]
        result[output.name] = evaluate(y_true, y_pred, output.classes, metric=output.metric, n_boot=n_boot,
                                       seed=seed)
    return result


def write_metrics(directory: Path, name: str, result: dict, embeddings: str, labels: str, *,
                  plots: bool = True, staged: list | None = None) -> dict:
    """metrics/<name>.json and (with `plots`) one confusion or scatter PNG per output; prints the
    report; returns headlines. `staged`: atomic_output's (the files written out, not renamed)."""
    safe = name.replace("/", "_")
    # (never half written, never through a link)
    with atomic_output(directory / f"{safe}.json", staged=staged) as stream:
        stream.write((metrics_json({"set": name, "embeddings": embeddings, "labels": labels, "outputs": result})
                      + "\n").encode())
    headline = {}
    for output, m in result.items():
        console.info(summary_line(name, output, m))
        png = directory / f"{safe}.{output}.png"
        if not (plots and m.get("n", 0) >= (2 if m.get("kind") == "value" else 1)):
            # (an earlier run's figure beside these scores would not show them: removed with them)
            remove_with_outputs(png, staged)
        if m.get("kind") == "value":
            if plots and m.get("n", 0) >= 2:
                rho = "undefined" if np.isnan(m["spearman"]) else f"{m['spearman']:.3f}"  # (a constant side)
                save_scatter_png(m["true"], m["predicted"], png,
                                 f"{name} {output}: Spearman {rho}", staged=staged)
            headline[output] = {k: m.get(k) for k in ("metric", "spearman", "ci95", "pearson", "mse", "mae", "r2",
                                                       "n", "n_proteins")}
            continue
        if console.state.verbosity >= 1:
            print_report(name, output, m)
        if plots and m.get("n"):
            save_confusion_png(m, png, f"{name} {output}: {m['metric']} "
                               f"{m['accuracy']:.3f}", staged=staged)
        headline[output] = {k: m.get(k) for k in ("metric", "accuracy", "ci95", "mcc", "balanced_accuracy",
                                                   "majority", "n", "n_proteins")}
        if "accuracy_per_protein" in m:  # (per-residue outputs: the other convention, beside the pooled Q3/Q8)
            headline[output]["accuracy_per_protein"] = m["accuracy_per_protein"]
        for key in ("sov99_per_protein", "sov99_pooled"):  # (secondary structure: SOV'99 beside Q3/Q8)
            if key in m:
                headline[output][key] = m[key]
    return headline


def _metric_names(task: Task) -> str:
    """The outputs' validation scores (what the kept epoch goes by), once each: "Q3/Q8",
    "Spearman", "Q10/Q2", "MCC" (Output.select)."""
    return "/".join(dict.fromkeys("MCC" if o.select == "mcc" else o.metric for o in task.outputs))


def _plot_curves(history: list[dict], task: Task, path: Path) -> None:
    # A Figure of its own, not pyplot's: matplotlib.use("Agg") switched a notebook's backend
    # (its plots stopped showing), and pyplot's figure list is shared with the caller's threads.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for member in sorted({h["member"] for h in history}):
        rows = [h for h in history if h["member"] == member]
        epochs = [h["epoch"] for h in rows]
        ax_loss.plot(epochs, [h["train_loss"] for h in rows], "-", label=f"train {member}")
        ax_loss.plot(epochs, [h["valid_loss"] for h in rows], "--", label=f"valid {member}")
        for output in task.outputs:  # an output the validation set has no label for has no curve
            values = [h.get(f"valid_{output.name}", float("nan")) for h in rows]
            if any(v == v for v in values):
                ax_acc.plot(epochs, values, label=f"{output.metric} {member}")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel(f"validation {_metric_names(task)}")
    ax_loss.legend(fontsize=7)
    if ax_acc.lines:
        ax_acc.legend(fontsize=7)
    else:  # (no output had a score to plot: matplotlib warned of an empty legend)
        ax_acc.text(0.5, 0.5, "no validation score", ha="center", va="center", transform=ax_acc.transAxes)
    fig.suptitle(f"{task.name} head", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)

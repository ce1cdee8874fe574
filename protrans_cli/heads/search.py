"""Hyperparameter search for a head: every combination of the settings given, each a full fit,
the one with the best validation score kept.

    from protrans_cli.heads.search import search
    result = search(FitConfig(task="loc"), {"lr": [1e-3, 1e-4], "hidden": [32, 128]},
                    "train.h5", "train.fasta", "heads/loc", tests=[("test.h5", "test.fasta")])

Each trial is an ordinary `fit` into HEAD.search/trial_NN (resumable as any fit, and evaluated on
the --test sets too, so that the kept one needs no second training); the score that chooses is
the validation set's (with `folds`, the out-of-fold "cv" set's): the mean over outputs of the
headline metric (accuracy, Spearman's rho for values). Test sets never choose. The kept trial is
copied to HEAD with search.json (every trial's settings and scores) beside its files.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import shutil
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from protrans_cli import console
from protrans_cli.errors import UsageError, a_or_an, force_option, option, resume_option

# What --search may vary: name (as the flag, without --) -> FitConfig field
SEARCHABLE = {"lr": "lr", "weight-decay": "weight_decay", "hidden": "hidden", "dropout": "dropout",
              "kernel": "kernel", "batch-size": "batch_size", "max-residues": "max_residues", "patience": "patience",
              "max-epochs": "max_epochs", "architecture": "architecture", "class-weights": "class_weights"}
TRIAL_FILES = ("search.json",)


@dataclass
class SearchResult:
    head_dir: Path
    best: dict                      # the kept trial's settings
    trials: list[dict] = field(default_factory=list)  # {"trial", "settings", "score", "set", "metrics"}


def parse_grid(specs) -> dict[str, list]:
    """`["lr=1e-3,1e-4", "hidden=32,128"]` -> {"lr": [0.001, 0.0001], "hidden": [32, 128]} (FitConfig
    field names, values typed as the field)."""
    from protrans_cli.heads.fit import FitConfig

    types = {f.name: f.type for f in fields(FitConfig)}
    grid: dict[str, list] = {}
    for spec in specs:
        name, sep, values = str(spec).partition("=")
        key = SEARCHABLE.get(name.strip().replace("_", "-").lstrip("-"))
        if not sep or key is None:
            raise UsageError(f"--search {spec!r}: give NAME=V1,V2,... with NAME one of {', '.join(SEARCHABLE)}")
        if key in grid:
            raise UsageError(f"--search names {name.strip()} twice: give its values once, separated by commas")
        words = [w.strip() for w in values.split(",") if w.strip()]
        if not words:
            raise UsageError(f"--search {spec!r}: no values after '='")
        grid[key] = [_typed(key, types[key], w, spec) for w in words]
        if len(set(map(repr, grid[key]))) != len(grid[key]):
            raise UsageError(f"--search {spec!r}: a value given twice")
    return grid


def _typed(key: str, annotation: str, word: str, spec: str):
    kind = str(annotation)
    try:
        if "bool" in kind:
            if word.lower() not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                raise ValueError
            return word.lower() in ("true", "yes", "1", "on")
        if "int" in kind:
            return int(word)
        if "float" in kind:
            value = float(word)
            if not math.isfinite(value):
                raise ValueError
            return value
        return word
    except ValueError:
        raise UsageError(f"--search {spec!r}: {word!r} is not a value of {key.replace('_', '-')}") from None


def trial_name(i: int) -> str:
    return f"trial_{i:02d}"


def trials_path(out_dir) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".search")


def _words(settings: dict) -> str:
    return " ".join(f"{key.replace('_', '-')}={value}" for key, value in settings.items())


def _score(metrics: dict, set_name: str, by_mcc: frozenset = frozenset()) -> float:
    """Mean over outputs of the headline metric of `set_name` (MCC for the outputs `by_mcc`, those
    kept by it in training, Output.select: disorder's; nan-free; -inf with nothing scored)."""
    values = []
    for output, headline in (metrics.get(set_name) or {}).items():
        value = headline.get("mcc") if output in by_mcc else headline.get("accuracy", headline.get("spearman"))
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            values.append(float(value))
    return sum(values) / len(values) if values else float("-inf")


def search(config, grid: dict[str, list], embeddings, labels, out_dir, *, valid: tuple | None = None,
           tests: list[tuple] = ()) -> SearchResult:
    """Fit every combination of `grid` (FitConfig field -> values) and keep the best by validation."""
    with contextlib.ExitStack() as held:
        return _search(held, config, grid, embeddings, labels, out_dir, valid=valid, tests=tests)


def _search(held: contextlib.ExitStack, config, grid: dict[str, list], embeddings, labels, out_dir, *,
            valid: tuple | None, tests: list[tuple]) -> SearchResult:
    from protrans_cli.heads.fit import _checked_output, fit, head_in_use, label_files, partial_path
    from protrans_cli.heads.metrics import dumps as metrics_json
    from protrans_cli.io.files import (empty_folder, folder_can_be_made, folder_lock, make_temporary, replace_directory,
                                       replay_stdin, signals_held, stdin_if_named)

    if not grid:
        raise UsageError("search needs settings to vary (--search NAME=V1,V2,...)")
    for key in grid:
        if key not in SEARCHABLE.values():
            # (the grid is keyed by FitConfig field, as parse_grid makes it: "it varies weight-decay"
            # answered {"weight-decay": ...} with the very name it refused)
            raise UsageError(f"search cannot vary {key!r}; it varies the FitConfig fields "
                             f"{', '.join(SEARCHABLE.values())} (parse_grid reads --search NAME=V1,V2,... words)")
    trials = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    if len(trials) < 2:
        raise UsageError("--search gives one setting only: give two values or more to compare")
    for settings in trials:  # every trial's settings checked before any is trained
        replace(config, **settings).check()
    _check_trials(config, grid, trials, embeddings, valid, tests)
    # (as fit's own -o: through a link, the folder it names; the trials beside it)
    out_dir = _checked_output(config, out_dir, embeddings, labels, valid, tests)
    from protrans_cli.embed import is_stream

    # (a pipe's second read, the second trial's, found it empty, "/dev/fd/63: is empty", or a named
    # pipe waited for a writer for ever; stdin is read once and replayed, below)
    for path in [*label_files(labels, valid, tests), config.mask_path]:
        if path is not None and is_stream(path):
            raise UsageError(f"{path} is a pipe, which can be read once, and {option('--search', 'a search')} reads "
                             "it for every trial: give it as a file (a compressed one is read as it is)")
    # One search at a time on a HEAD, the lock a fit of HEAD takes: a second search was told "holds
    # an earlier search: ... --force starts over", and its --force deleted the running one's trials
    folder_can_be_made(out_dir.parent)  # (a file on its way: "afile: File exists", exit 1)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    held.enter_context(folder_lock(partial_path(out_dir), head_in_use()))
    folder = trials_path(out_dir)
    if folder.exists() and not (config.resume or config.force):
        raise UsageError(f"{folder} holds an earlier search: {resume_option()} continues it, {force_option()} starts "
                         "over")
    if out_dir.exists() and not empty_folder(out_dir):  # (an empty one: a workflow's made for it)
        _check_existing_head(config, out_dir, embeddings, labels, valid, tests)
    if config.force and folder.is_dir():
        _remove_trials(folder)
    # Labels from stdin are read once and given to every trial (the second trial's read found
    # stdin empty: "<stdin>: is empty", after the first had trained)
    piped = stdin_if_named(label_files(labels, valid, tests))
    set_name = "cv" if config.folds else "valid"
    from protrans_cli.heads.tasks import get_task

    by_mcc = frozenset(o.name for o in get_task(config.task).outputs if o.select == "mcc")
    console.info(f"search: {len(trials)} trials ({' x '.join(str(len(v)) for v in grid.values())}: "
                 + ", ".join(key.replace("_", "-") for key in grid) + f"), chosen by the {set_name} score")
    done: list[dict] = []
    for i, settings in enumerate(trials):
        name = trial_name(i)
        console.info(f"search: {name} ({i + 1} of {len(trials)}): {_words(settings)}")
        with contextlib.ExitStack() as trial:  # (not `held`: that one holds the head's lock to the end)
            if piped is not None:
                replay_stdin(trial, piped)
            trial.enter_context(console.interim_outputs())  # (a trial's head is not the search's output)
            result = fit(replace(config, **settings), embeddings, labels, folder / name, valid=valid, tests=tests)
        score = _score(result.metrics, set_name, by_mcc)
        done.append({"trial": name, "settings": settings, "score": score, "set": set_name,
                     "metrics": result.metrics.get(set_name)})
        console.info(f"search: {name}: {_said(score, set_name)}")
    best = max(done, key=lambda t: t["score"])  # (max keeps the first of a tie: the earlier trial)
    if not math.isfinite(best["score"]):
        # (it said "valid score -inf" and kept trial_00 as if it had been chosen)
        console.warn(f"search: no trial has a {set_name} score (its headline metric is undefined for every trial, "
                     f"e.g. Spearman on a constant or tiny set): kept {best['trial']}, the first, unchosen; "
                     "compare the trials' other metrics in search.json, or give a larger validation set")
    record = {"grid": {key.replace("_", "-"): values for key, values in grid.items()}, "chosen_by": set_name,
              "best": best["trial"],
              "trials": [{**t, "settings": {k.replace("_", "-"): v for k, v in t["settings"].items()},
                          "score": t["score"] if math.isfinite(t["score"]) else None} for t in done]}
    text = metrics_json(record) + "\n"  # (strict JSON: a trial with nothing scored is null)
    (folder / "search.json").write_text(text, encoding="utf-8")
    tmp = make_temporary(out_dir.parent, f".{out_dir.name}.", folder=True)
    try:
        shutil.copytree(folder / best["trial"], tmp, dirs_exist_ok=True)
        (tmp / "search.json").write_text(text, encoding="utf-8")
        with signals_held():  # (as fit's head: a signal held meanwhile comes once the output is whole)
            replace_directory(tmp, out_dir)
            console.output_complete(str(out_dir))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for t in sorted(done, key=lambda t: -t["score"] if math.isfinite(t["score"]) else math.inf):
        # (a closing table, best first: the trials' lines are far apart in a long log)
        console.info(f"search: {t['trial']}  {_said(t['score'], set_name)}  {_words(t['settings'])}"
                     + ("  <- kept" if t is best else ""))
    console.info(f"search: best {best['trial']} ({_words(best['settings'])}), {_said(best['score'], set_name)}; "
                 f"kept as {out_dir} (every trial in {folder})")
    return SearchResult(out_dir, best["settings"], done)


def _said(score: float, set_name: str) -> str:
    return f"{set_name} score {score:.4f}" if math.isfinite(score) else f"no {set_name} score"


def _check_trials(config, grid: dict, trials: list[dict], embeddings, valid, tests) -> None:
    """What fit refuses of one trial's settings before it reads anything, for every trial (a grid
    whose second trial could not be trained was refused only after the first had been), and what
    only a grid can get wrong: a searched setting no trial's head reads (the trials would be the
    same), an architecture whose input (per-residue rows) an embeddings file lacks."""
    from protrans_cli.heads.data import _source_kind
    from protrans_cli.heads.tasks import architecture_for, get_task, input_kind, unused_options
    from protrans_cli.io.h5 import EmbeddingsReader, PER_RESIDUE

    task = get_task(config.task, dual=config.dual)
    architectures = {architecture_for(task, settings.get("architecture", config.architecture))
                     for settings in trials}
    if any(settings.get("class_weights", config.class_weights) for settings in trials) \
            and any(o.is_value for o in task.outputs):
        raise UsageError("--class-weights is for classification; the value task is a regression")
    for key in grid:
        if all(key in unused_options(task, a) for a in architectures):
            kinds = " or ".join(sorted(architectures)).replace("fnn", "FNN").replace("cnn", "CNN")
            raise UsageError(f"--search {key.replace('_', '-')}: {a_or_an(kinds)} head does not read it, so the trials "
                             "would be the same head: leave it out")
    kinds = {input_kind(task, a) for a in architectures}
    if len(kinds) > 1:  # (one kind for all: the first trial says it, before any is trained)
        files = [embeddings, *(valid[:1] if valid else ()), *(t[0] for t in tests)]
        for path in dict.fromkeys(str(p) for p in files):
            with EmbeddingsReader(path) as reader:
                _source_kind(reader, PER_RESIDUE, task)


def _check_existing_head(config, out_dir: Path, embeddings, labels, valid, tests) -> None:
    """HEAD exists: --resume continues the search that kept it (its search.json), --force replaces
    a head (never a folder of other files, or one holding an input), as fit's -o. The search
    replaced any folder at the end: with --force a project folder and the inputs in it, with
    --resume the head of a plain fit."""
    from protrans_cli.heads.fit import replaceable_head

    head = (out_dir / "config.json").is_file() and (out_dir / "weights.safetensors").is_file()
    if not config.force:
        if not config.resume:
            raise UsageError(f"{out_dir} exists: {force_option()} replaces it")
        if not (head and (out_dir / "search.json").is_file()):
            raise UsageError(f"{out_dir} exists and is not the head a search kept (no search.json): {resume_option()} "
                             f"continues a search only; {force_option()} replaces it")
        return
    replaceable_head(out_dir, embeddings, labels, valid, tests)


def _remove_trials(folder: Path) -> None:
    """--force: an earlier search's folder, if it holds only what a search writes there."""
    for entry in folder.iterdir():
        if not (entry.name.startswith("trial_") or entry.name in TRIAL_FILES or entry.name.startswith(".")):
            raise UsageError(f"{folder} holds {entry.name}, which a search did not write: {force_option()} replaces "
                             f"a search's folder only; move it away or choose another {option('-o', 'out_dir')}")
    shutil.rmtree(folder)

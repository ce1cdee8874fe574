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

import itertools
import math
import shutil
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from protrans_cli import console
from protrans_cli.errors import UsageError

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


def _score(metrics: dict, set_name: str) -> float:
    """Mean over outputs of the headline metric of `set_name` (nan-free; -inf with nothing scored)."""
    values = []
    for headline in (metrics.get(set_name) or {}).values():
        value = headline.get("accuracy", headline.get("spearman"))
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            values.append(float(value))
    return sum(values) / len(values) if values else float("-inf")


def search(config, grid: dict[str, list], embeddings, labels, out_dir, *, valid: tuple | None = None,
           tests: list[tuple] = ()) -> SearchResult:
    """Fit every combination of `grid` (FitConfig field -> values) and keep the best by validation."""
    from protrans_cli.heads.fit import fit
    from protrans_cli.heads.metrics import dumps as metrics_json
    from protrans_cli.io.files import make_temporary, refuse_special_output, replace_directory

    if not grid:
        raise UsageError("search needs settings to vary (--search NAME=V1,V2,...)")
    for key in grid:
        if key not in SEARCHABLE.values():
            raise UsageError(f"search cannot vary {key!r}; it varies {', '.join(SEARCHABLE)}")
    trials = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    if len(trials) < 2:
        raise UsageError("--search gives one setting only: give two values or more to compare")
    for settings in trials:  # every trial's settings checked before any is trained
        replace(config, **settings).check()
    refuse_special_output(out_dir, "-o", "a head directory")
    out_dir = Path(out_dir)
    folder = trials_path(out_dir)
    if folder.exists() and not (config.resume or config.force):
        raise UsageError(f"{folder} holds an earlier search: --resume continues it, --force starts over")
    if out_dir.exists() and not (config.resume or config.force):
        raise UsageError(f"{out_dir} exists: --force replaces it")
    if config.force and folder.is_dir():
        _remove_trials(folder)
    set_name = "cv" if config.folds else "valid"
    console.info(f"search: {len(trials)} trials ({' x '.join(str(len(v)) for v in grid.values())}: "
                 + ", ".join(key.replace("_", "-") for key in grid) + f"), chosen by the {set_name} score")
    done: list[dict] = []
    for i, settings in enumerate(trials):
        name = trial_name(i)
        console.info(f"search: {name} ({i + 1} of {len(trials)}): {_words(settings)}")
        result = fit(replace(config, **settings), embeddings, labels, folder / name, valid=valid, tests=tests)
        score = _score(result.metrics, set_name)
        done.append({"trial": name, "settings": settings, "score": score, "set": set_name,
                     "metrics": result.metrics.get(set_name)})
        console.info(f"search: {name}: {set_name} score {score:.4f}")
    best = max(done, key=lambda t: (t["score"], -int(t["trial"][len("trial_"):])))  # a tie: the earlier trial
    record = {"grid": {key.replace("_", "-"): values for key, values in grid.items()}, "chosen_by": set_name,
              "best": best["trial"],
              "trials": [{**t, "settings": {k.replace("_", "-"): v for k, v in t["settings"].items()},
                          "score": t["score"] if math.isfinite(t["score"]) else None} for t in done]}
    text = metrics_json(record) + "\n"  # (strict JSON: a trial with nothing scored is null)
    (folder / "search.json").write_text(text)
    tmp = make_temporary(out_dir.parent, f".{out_dir.name}.", folder=True)
    try:
        shutil.copytree(folder / best["trial"], tmp, dirs_exist_ok=True)
        (tmp / "search.json").write_text(text)
        replace_directory(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    console.info(f"search: best {best['trial']} ({_words(best['settings'])}), {set_name} score {best['score']:.4f}; "
                 f"kept as {out_dir} (every trial in {folder})")
    return SearchResult(out_dir, best["settings"], done)


def _remove_trials(folder: Path) -> None:
    """--force: an earlier search's folder, if it holds only what a search writes there."""
    for entry in folder.iterdir():
        if not (entry.name.startswith("trial_") or entry.name in TRIAL_FILES or entry.name.startswith(".")):
            raise UsageError(f"{folder} holds {entry.name}, which a search did not write: --force replaces a "
                             "search's folder only; move it away or choose another -o")
    shutil.rmtree(folder)

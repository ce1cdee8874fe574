"""The whole pipeline on the bundled example data: prep, train, labels, embed, fit, predict, knn,
variants, project, export.

Every step is a real `protrans` command line, run in this process through the same entry point a
shell uses, and printed before it runs, so a user can copy any step and run it on their own data.
Offline, on CPU, in a few minutes at most.

    from protrans_cli.quickstart import run_quickstart
    summary = run_quickstart("protrans-quickstart", num_steps=150)
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from protrans_cli import console
from protrans_cli.errors import UsageError, at_least, force_option, given, option
from protrans_cli.io.files import check_replaceable, refuse_special_output, utf8_path_problem, utf8_text

EXAMPLE_FILES = ("proteins.fasta", "ss_train.csv", "ss_test.csv", "loc_train.fasta", "loc_test.fasta")
SUBFOLDERS = ("corpus", "fasta", "embeddings", "heads", "predictions")  # made before the steps write in them
OWN_NAMES = (*SUBFOLDERS, "model", "commands.sh")  # what a quickstart folder holds at its top
# what file browsers and network file systems leave in any folder
OS_LEFTOVERS = (".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints")


def _own_entry(entry) -> bool:
    """An entry quickstart may delete with its folder: its own names, a temporary named after one
    (`.model.old.xxx`), or what an operating system leaves in folders."""
    name = entry.name
    return (name in OWN_NAMES or name in OS_LEFTOVERS or name.startswith(".nfs")
            or (name.startswith(".") and name[1:].split(".")[0] in OWN_NAMES))


def example_data_dir() -> Path:
    """The example data shipped inside the package (see scripts/make_example_data.py)."""
    return Path(str(resources.files("protrans_cli") / "example_data"))


@dataclass
class QuickstartSummary:
    output: Path
    commands: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)  # head name -> metrics.json content
    outputs: dict[str, Path] = field(default_factory=dict)  # what -> path


def _arg(path) -> str:
    """A path of the quickstart folder as a step's command line takes it: `./-q/...` for an -o
    that begins with a dash (`quickstart -o ./-q`; pathlib drops the `./`), which embed read as
    its options ("No such option '-/'"), after minutes of prep and train."""
    text = str(path)
    return os.path.join(".", text) if text.startswith("-") else text


def _run(step: str, args: list[str], summary: QuickstartSummary) -> None:
    """Run one protrans command line in-process; a failing step raises its ProtransError."""
    import click

    from protrans_cli.cli import _Stopped, cli

    line = "protrans " + " ".join(shlex.quote(a) for a in args)
    summary.commands.append(line)
    console.info(f"\n[{step}] $ {line}")
    # (what a stop in this step says, the step's own advice, "the same command and --resume", not quickstart's)
    stopped_here = (f"quickstart stopped in step {step!r}; {summary.output} is incomplete: "
                    f"{option('run quickstart again with --force', 'call run_quickstart again with force=True')} "
                    "to start over")
    start = time.perf_counter()
    ended: dict = {"train_result": None}  # (the train command keeps its result here, asked so)
    try:
        rc = cli.main(args=_global_flags() + args, prog_name="protrans", standalone_mode=False, obj=ended)
    except click.ClickException as exc:  # a usage error inside a step is a bug of this script
        raise UsageError(f"quickstart step {step!r} was refused: {exc.format_message()}") from None
    except _Stopped as exc:
        raise _Stopped(exc.signum, stopped_here) from None
    if isinstance(rc, int) and rc != 0:
        raise UsageError(f"quickstart step {step!r} exited with {rc}")
    if (result := ended.get("train_result")) is not None and not result.completed:
        # A scheduler's warning (SIGUSR1/SIGUSR2) is a planned stop for train, exit 0 with a checkpoint: here
        # the next steps went on without a model, the time nearly up, and failed at the first embed by it
        # (exit 1, "a training run without its final model"). Quickstart stops as for the warning in any step.
        raise _Stopped(getattr(signal, str(result.stopped_by), signal.SIGTERM), stopped_here)
    summary.seconds[step] = summary.seconds.get(step, 0.0) + time.perf_counter() - start


def _global_flags() -> list[str]:
    """-q, -v or --debug as given to quickstart: each step's command line sets the messages
    anew (without them every step printed its messages and summary under `-q`)."""
    state = console.state
    flags = ["-q"] if state.verbosity < 0 else ["-v"] * state.verbosity
    if state.debug and state.verbosity < 2:
        flags.append("--debug")
    return flags


def run_quickstart(output, *, family: str = "bert", num_steps: int = 150, head_epochs: int = 15,
                   force: bool = False, data_dir=None) -> QuickstartSummary:
    """Run the pipeline into `output`; returns the command lines, timings, metrics and paths.

    `head_epochs` caps the secondary-structure head's epochs (the localization head gets 4x as
    many: it sees far fewer examples per epoch).
    """
    from protrans_cli.models import get_family

    get_family(family)  # an unknown family is a usage error before anything is written
    at_least(num_steps, 1, option("--num-steps", "num_steps"))
    at_least(head_epochs, 1, "head_epochs")
    refuse_special_output(output, "-o", "the quickstart folder", keyword="output")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"is a file, not a folder for the quickstart (choose another {option('-o', 'output')})",
                         path=str(out))
    if (problem := utf8_path_problem(out.absolute())) is not None:  # (its train step would fail, after the others)
        raise UsageError(f"{utf8_text(str(out))}: {problem}")
    # (before --force deletes anything: a run refused for its data had removed the last one's results)
    data = Path(data_dir) if data_dir else example_data_dir()
    missing = [f for f in EXAMPLE_FILES if not (data / f).exists()]
    if missing:
        raise UsageError(f"example data incomplete in {data}: missing {', '.join(missing)}")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UsageError(f"{out} exists and is not empty (use {force_option()} to replace it)")
        # only a quickstart folder (its own names, and temporaries named after them) is replaced
        check_replaceable(out, "quickstart", _own_entry, in_place=True)
        if out.is_symlink():  # (rmtree refuses a link: "Cannot call rmtree on a symbolic link", no name)
            raise UsageError(f"{out} is a symbolic link to {out.resolve()}: {force_option()} replaces a folder, not a "
                             f"link (give {given('-o', 'output', str(out.resolve()))})")
        # Emptied, not removed and made anew: a mount point (a container's volume) cannot be removed
        # (rmtree failed on it, "Device or resource busy", the last run's results gone), and the
        # folder keeps its owner, mode and ACLs
        for entry in out.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    for sub in SUBFOLDERS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    s = QuickstartSummary(out)
    p = lambda *parts: _arg(out.joinpath(*parts))  # noqa: E731

    # 1. The pretraining corpus: one spaced protein per line, a validation split by id hash, the
    #    training proteins shuffled (the example file lists one task's proteins, then the other's).
    _run("prep", ["prep", str(data / "proteins.fasta"), "-o", p("corpus", "train.txt"), "--shuffle",
                  "--valid-fraction", "0.05", "--valid-output", p("corpus", "valid.txt"),
                  "--stats", p("corpus", "stats.json")], s)
    # 2. Pretrain a tiny model on it (seconds on a CPU), on crops longer than any example protein
    #    (400 residues): embed warns about proteins longer than a model's training crops.
    _run("train", ["train", "--family", family, "--preset", "tiny", "--corpus", p("corpus", "train.txt"),
                   "--val-corpus", p("corpus", "valid.txt"), "-o", p("model"), "--num-steps", str(num_steps),
                   "--warmup-steps", str(max(1, num_steps // 10)), "--lr", "2e-3", "--max-length", "512",
                   "--global-batch-size", "16", "--micro-batch-size", "16", "--log-every", "10",
                   "--save-every", str(num_steps), "--seed", "0"], s)
    # 3. Label files to the FASTA that embed reads (NetSurfP CSVs have no ids: ids from checksums).
    for name, label_file in [("ss_train", "ss_train.csv"), ("ss_test", "ss_test.csv"),
                             ("loc_train", "loc_train.fasta"), ("loc_test", "loc_test.fasta")]:
        _run("labels", ["labels", str(data / label_file), "-o", p("fasta", f"{name}.fasta")], s)
    # 4. Embeddings: the weight-free one-hot baseline and the model trained in step 2.
    for model, tag in [("onehot", "onehot"), (p("model"), family)]:
        for name in ("ss_train", "ss_test"):
            _run("embed", ["embed", p("fasta", f"{name}.fasta"), "-m", model, "--per-residue",
                           "-o", p("embeddings", f"{name}.{tag}.h5")], s)
        for name in ("loc_train", "loc_test"):
            _run("embed", ["embed", p("fasta", f"{name}.fasta"), "-m", model, "--per-protein",
                           "-o", p("embeddings", f"{name}.{tag}.h5")], s)
    # 5. Heads: secondary structure (CNN, 3 and 8 states) and localization (FNN) on each.
    for tag in ("onehot", family):
        _run("fit", ["fit", "ss3+ss8", "--embeddings", p("embeddings", f"ss_train.{tag}.h5"),
                     "--labels", str(data / "ss_train.csv"),
                     "--test", p("embeddings", f"ss_test.{tag}.h5"), str(data / "ss_test.csv"),
                     "--max-epochs", str(head_epochs), "--bootstrap", "200", "-o", p("heads", f"ss.{tag}")], s)
        _run("fit", ["fit", "loc", "--embeddings", p("embeddings", f"loc_train.{tag}.h5"),
                     "--labels", str(data / "loc_train.fasta"),
                     "--test", p("embeddings", f"loc_test.{tag}.h5"), str(data / "loc_test.fasta"),
                     "--max-epochs", str(4 * head_epochs), "--patience", "10", "--bootstrap", "200",
                     "-o", p("heads", f"loc.{tag}")], s)
    # 6. Predictions on the test proteins with the one-hot heads.
    _run("predict", ["predict", p("heads", "ss.onehot"), "--embeddings", p("embeddings", "ss_test.onehot.h5"),
                     "-o", p("predictions", "ss_test.ss3.fasta")], s)
    _run("predict", ["predict", p("heads", "loc.onehot"), "--embeddings", p("embeddings", "loc_test.onehot.h5"),
                     "-o", p("predictions", "loc_test.csv")], s)
    # 7. Annotation transfer: each test protein takes the location of its nearest training
    #    protein in the trained model's embedding space, scored against its own.
    _run("knn", ["knn", p("embeddings", f"loc_test.{family}.h5"), "--reference", p("embeddings", f"loc_train.{family}.h5"),
                 "--labels", str(data / "loc_train.fasta"), "--score", str(data / "loc_test.fasta"),
                 "--bootstrap", "200", "-o", p("predictions", "loc_test.knn.tsv")], s)
    # 8. Zero-shot variant effects: every substitution of the first test protein scored by the
    #    trained model (masked marginals; a causal Transformer-XL: the log-likelihood ratio).
    from protrans_cli.io.fasta import read_fasta

    first_record = next(iter(read_fasta(out / "fasta" / "loc_test.fasta")))
    first = first_record.id
    scan = None
    if get_family(family).masked_lm_class is not None:
        scan = out / "predictions" / f"{first}.variants.csv"
        scoring = ["--scoring", "log-likelihood"] if get_family(family).causal else []
        _run("variants", ["variants", "--all-singles", "--fasta", p("fasta", "loc_test.fasta"), "--id", first,
                          "-m", p("model"), *scoring, "-o", _arg(scan), "--plot", _arg(scan.with_suffix(".png"))], s)

    # 8b. Sequences from the trained model: a masked LM redesigns ten residues of the first test
    #     protein's first sixty (a template's `_`, Gibbs sampling); a causal one (Transformer-XL,
    #     XLNet) draws new proteins left to right. (T5's decoder rebuilds its input: no sampler.)
    designs = None
    if get_family(family).masked_lm_class is not None and family != "t5":
        designs = out / "predictions" / "designs.fasta"
        if get_family(family).causal or family == "xlnet":
            how = ["--max-length", "100"]
        else:
            from protrans_cli.generate import DESIGNED

            head = first_record.sequence[:60]
            how = ["--template", head[:20] + DESIGNED * len(head[20:30]) + head[30:]]
        _run("generate", ["generate", "-m", p("model"), *how, "-n", "5", "--seed", "0", "-o", _arg(designs)], s)

    # 9. A map of the trained model's embedding space: the training and test proteins by PCA,
    #    coloured by their location (a table, a picture and a page to explore in a browser).
    _run("project", ["project", p("embeddings", f"loc_train.{family}.h5"), p("embeddings", f"loc_test.{family}.h5"),
                     "--labels", str(data / "loc_train.fasta"), "--labels", str(data / "loc_test.fasta"),
                     "-o", p("predictions", "loc.map.tsv"), "--plot", p("predictions", "loc.map.png"),
                     "--html", p("predictions", "loc.map.html")], s)
    # 10. The test proteins' vectors as a table, for R, a spreadsheet or any script without h5py.
    _run("export", ["export", p("embeddings", f"loc_test.{family}.h5"), "-o", p("embeddings", f"loc_test.{family}.csv")], s)

    for head in sorted((out / "heads").iterdir()):
        metrics = head / "metrics.json"
        if metrics.exists():
            s.metrics[head.name] = json.loads(metrics.read_text(encoding="utf-8"))
    s.outputs = {
        "corpus (prep)": out / "corpus" / "train.txt",
        "pretrained model (train)": out / "model",
        "training curve": out / "model" / "loss_curve.png",
        "embeddings (embed)": out / "embeddings",
        "heads (fit)": out / "heads",
        "secondary structure predictions": out / "predictions" / "ss_test.ss3.fasta",
        "localization predictions": out / "predictions" / "loc_test.csv",
        "nearest training proteins (knn)": out / "predictions" / "loc_test.knn.tsv",
    }
    s.outputs["map of the embedding space (project)"] = out / "predictions" / "loc.map.html"
    s.outputs["embeddings as a table (export)"] = out / "embeddings" / f"loc_test.{family}.csv"
    if scan is not None:
        s.outputs["variant effects of one protein (variants)"] = scan
        s.outputs["their landscape"] = scan.with_suffix(".png")
    if designs is not None:
        s.outputs["sequences from the model (generate)"] = designs
    write_commands(out, s.commands)
    return s


def write_commands(out: Path, commands: list[str]) -> None:
    """OUT/commands.sh: the command lines, after a mkdir of the folders the steps write in
    (a step creates only its own output), so that the script runs as written from the same folder, or a fresh one."""
    mkdir = "mkdir -p " + " ".join(shlex.quote(_arg(out / sub)) for sub in SUBFOLDERS)
    (out / "commands.sh").write_text("#!/bin/sh\n# The command lines `protrans quickstart` ran. The train, embed and fit "
                                     "lines refuse to replace\n# their outputs: run this once the results in "
                                     f"{shlex.quote(str(out))} are moved away (or with OUTPUT edited).\nset -e\n"
                                     + mkdir + "\n" + "\n".join(commands) + "\n", encoding="utf-8")

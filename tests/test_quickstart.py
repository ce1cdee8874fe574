"""The quickstart pipeline end to end through the real CLI: every output exists and agrees with the others."""

from __future__ import annotations

import csv
import json
import math
import os

from protrans_cli.io.fasta import read_fasta
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader


def test_quickstart_end_to_end(tmp_path, run_cli, capsys):
    # One test, one run: a module fixture shared by several tests ran the pipeline once per
    # pytest-xdist worker (twice in CI).
    from protrans_cli.quickstart import run_quickstart

    out = tmp_path / "run"
    summary = run_quickstart(out, num_steps=8, head_epochs=2)
    # what a first run shows models good practice: the pretrained model is not asked to embed
    # proteins longer than its training crops (it was, with a warning for each embed step)
    assert "saw whole in training" not in capsys.readouterr().err
    _every_output_exists(out, summary)
    _outputs_are_consistent(out)
    _refuses_to_overwrite(out, run_cli)


def _every_output_exists(out, summary):
    for what, path in summary.outputs.items():
        assert path.exists(), f"{what}: {path} missing"
    lines = [x for x in (out / "commands.sh").read_text().splitlines() if x.startswith("protrans ")]
    assert lines == summary.commands and len(lines) == 25
    # every substitution of the first test protein, scored by the trained model
    scan = summary.outputs["variant effects of one protein (variants)"]
    first = next(iter(read_fasta(out / "fasta" / "loc_test.fasta")))
    with open(scan) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 19 * len(first.sequence) and rows[0]["id"] == first.id
    assert all(math.isfinite(float(row["model_masked_marginals"])) for row in rows)
    # the designs: ten residues of the first test protein's first sixty drawn by the trained model,
    # the others kept
    designs = list(read_fasta(summary.outputs["sequences from the model (generate)"]))
    assert len(designs) == 5 and all("designed=10" in d.description for d in designs)
    head = first.sequence[:60]
    for d in designs:
        assert len(d.sequence) == 60 and d.sequence[:20] == head[:20] and d.sequence[30:] == head[30:]
        assert set(d.sequence[20:30]) <= set("ACDEFGHIKLMNPQRSTVWY")
    # the map: every training and test protein once, coloured by location (labels from both files)
    with open(out / "predictions" / "loc.map.tsv") as fh:
        placed = list(csv.DictReader(fh, delimiter="\t"))
    assert len(placed) == 400 and {row["source"] for row in placed} == {"loc_train.bert.h5", "loc_test.bert.h5"}
    assert all(row["loc"] and math.isfinite(float(row["x"])) for row in placed)
    assert (out / "predictions" / "loc.map.html").read_text().count("<circle ") == 400


def _outputs_are_consistent(out):
    ss_test = {r.id: r.sequence for r in read_fasta(out / "fasta" / "ss_test.fasta")}
    assert len(ss_test) == 64
    # per-residue embeddings: one row per residue, both models, ids as in the FASTA
    dims = {}
    for tag in ("onehot", "bert"):
        with EmbeddingsReader(out / "embeddings" / f"ss_test.{tag}.h5") as r:
            assert set(r.ids(PER_RESIDUE)) == set(ss_test)
            for ident, arr, _attrs in r.items(PER_RESIDUE):
                assert arr.shape[0] == len(ss_test[ident])
            dims[tag] = r.dim(PER_RESIDUE)
    assert dims["onehot"] == 21
    with EmbeddingsReader(out / "embeddings" / "loc_test.bert.h5") as r:
        assert r.dim(PER_PROTEIN) == dims["bert"]
    # predictions: one state per residue, from the 3-state alphabet
    preds = {r.id: r.sequence for r in read_fasta(out / "predictions" / "ss_test.ss3.fasta")}
    assert preds.keys() == ss_test.keys()
    for ident, states in preds.items():
        assert len(states) == len(ss_test[ident]) and set(states) <= set("HEC")
    loc_ids = {r.id for r in read_fasta(out / "fasta" / "loc_test.fasta")}
    with open(out / "predictions" / "loc_test.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {row["id"] for row in rows} == loc_ids
    with open(out / "predictions" / "loc_test.knn.tsv") as fh:  # one nearest training protein each
        hits = list(csv.DictReader(fh, delimiter="\t"))
    train_ids = {r.id for r in read_fasta(out / "fasta" / "loc_train.fasta")}
    assert {h["query"] for h in hits} == loc_ids and len(hits) == len(loc_ids)
    assert {h["neighbour"] for h in hits} <= train_ids and all(float(h["distance"]) >= 0 for h in hits)
    # heads record the embedding dimension they were trained on, and metrics for the test set
    for head, dim in [("ss.onehot", 21), ("ss.bert", dims["bert"]), ("loc.onehot", 21)]:
        config = json.loads((out / "heads" / head / "config.json").read_text())
        assert config["input_dim"] == dim
        metrics = json.loads((out / "heads" / head / "metrics.json").read_text())
        test_set = next(k for k in metrics if k.endswith("_test"))
        for m in metrics[test_set].values():
            assert 0.0 <= m["accuracy"] <= 1.0 and m["n"] > 0


def test_force_replaces_a_quickstart_folder_only(run_cli, tmp_path, monkeypatch):
    """--force deleted any folder (a project's own files) and `-o .` emptied the working directory."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "labels.csv").write_text("mine")
    result = run_cli("quickstart", "-o", project, "--force")
    assert result.exit_code == 2 and "holds files that are not quickstart's (data)" in result.stderr
    monkeypatch.chdir(project)
    result = run_cli("quickstart", "-o", ".", "--force")
    assert result.exit_code == 2 and "would delete the current directory" in result.stderr
    assert (project / "data" / "labels.csv").read_text() == "mine"


def test_force_on_a_link_to_a_quickstart_folder_names_it(run_cli, tmp_path):
    """-o LINK --force, LINK a symbolic link to a quickstart folder, ended in shutil's "Cannot call
    rmtree on a symbolic link" (exit 1, no path named): refused, naming the link and its folder."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "commands.sh").write_text("#!/bin/sh\n")
    link = tmp_path / "link"
    link.symlink_to(real)
    result = run_cli("quickstart", "-o", link, "--force")
    assert result.exit_code == 2, result.stderr
    assert f"{link} is a symbolic link to {real}" in result.stderr
    assert (real / "commands.sh").exists() and link.is_symlink()


def _refuses_to_overwrite(out, run_cli):
    result = run_cli("quickstart", "-o", out)
    assert result.exit_code == 2
    assert "--force" in result.stderr


def _prep_line(out):
    import shlex

    from protrans_cli.quickstart import example_data_dir

    return ("protrans prep " + shlex.quote(str(example_data_dir() / "proteins.fasta")) + " -o "
            + shlex.quote(str(out / "corpus" / "train.txt")))


def test_steps_keep_quiet(tmp_path, capsys):
    # Each step is a fresh command line: without the global flags it set the messages back to
    # normal, and `protrans -q quickstart` printed every step's messages and summary.
    from protrans_cli import console
    from protrans_cli.quickstart import QuickstartSummary, _run

    console.configure(verbosity=-1)
    out = tmp_path / "q"
    (out / "corpus").mkdir(parents=True)
    args = _prep_line(out).split()[1:]  # the path holds no space here
    for step in ("prep", "prep again"):
        _run(step, args, QuickstartSummary(out))
    assert console.state.verbosity == -1
    assert capsys.readouterr().err == ""


def test_commands_sh_runs_as_written_in_a_fresh_folder(tmp_path, monkeypatch):
    # commands.sh created none of the folders the steps write in: run as written from a fresh
    # folder, its first step failed ("output directory does not exist").
    import os
    import subprocess
    import sys
    from pathlib import Path

    from protrans_cli.quickstart import write_commands
    from tests.conftest import ROOT

    first = tmp_path / "first"
    (first / "q s").mkdir(parents=True)
    monkeypatch.chdir(first)
    write_commands(Path("q s"), [_prep_line(Path("q s"))])  # -o 'q s', relative, as a user gives it
    fresh = tmp_path / "fresh"
    (fresh / "bin").mkdir(parents=True)
    (fresh / "commands.sh").write_bytes((first / "q s" / "commands.sh").read_bytes())
    wrapper = fresh / "bin" / "protrans"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m protrans_cli -q "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{fresh / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["sh", "commands.sh"], cwd=fresh, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (fresh / "q s" / "corpus" / "train.txt").stat().st_size > 0


def test_interrupted_step_says_how_to_start_again(tmp_path, run_cli, monkeypatch):
    # A stopped step's advice was its own ("continue with the same command and --resume"):
    # quickstart has no --resume, and run again it refuses the non-empty folder without --force.
    import protrans_cli.corpus

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(protrans_cli.corpus, "build_corpus", interrupted)
    result = run_cli("-q", "quickstart", "-o", tmp_path / "q")
    assert result.exit_code == 130
    assert result.stderr.startswith("protrans: error: interrupted: quickstart stopped in step 'prep';")
    assert "--force" in result.stderr and "--resume" not in result.stderr


def test_an_unknown_family_is_refused_before_anything_is_written(tmp_path, run_cli):
    # prep wrote into OUTPUT before train refused the family, and the corrected command then
    # met "OUTPUT exists and is not empty"
    result = run_cli("-q", "quickstart", "-o", tmp_path / "q", "--family", "nope")
    assert result.exit_code == 2 and "unknown model family 'nope'" in result.stderr
    assert not (tmp_path / "q").exists()


def test_no_training_step_or_head_epoch_is_refused_before_anything_is_written(tmp_path):
    import pytest

    from protrans_cli.errors import UsageError
    from protrans_cli.quickstart import run_quickstart

    for counts in (dict(num_steps=0), dict(head_epochs=0)):
        with pytest.raises(UsageError, match="^(num_steps|head_epochs) must be at least 1, got 0$"):
            run_quickstart(tmp_path / "q", **counts)
        assert not (tmp_path / "q").exists()


def test_incomplete_example_data_is_refused_before_force_deletes_the_last_run(tmp_path):
    """run_quickstart(..., data_dir=DIR) with a file missing from DIR: refused naming it, and with
    force=True the folder of the last run is still there (it was deleted first, then the data
    refused: the results lost for nothing)."""
    import pytest

    from protrans_cli.errors import UsageError
    from protrans_cli.quickstart import run_quickstart

    last = tmp_path / "q"
    (last / "heads").mkdir(parents=True)
    (last / "commands.sh").write_text("#!/bin/sh\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "proteins.fasta").write_text(">a\nMKV\n")
    with pytest.raises(UsageError, match=r"^example data incomplete in .*data: missing ss_train\.csv, ss_test\.csv, "
                                         r"loc_train\.fasta, loc_test\.fasta$"):
        run_quickstart(last, force=True, data_dir=tmp_path / "data")
    assert (last / "commands.sh").read_text() == "#!/bin/sh\n" and (last / "heads").is_dir()


def test_a_file_as_the_quickstart_folder_is_refused_from_python(tmp_path):
    """The CLI's -o refuses a file itself (click's Path(file_okay=False)); run_quickstart names it."""
    import pytest

    from protrans_cli.errors import UsageError
    from protrans_cli.quickstart import run_quickstart

    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(UsageError, match=r"notes\.txt: is a file, not a folder for the quickstart"):
        run_quickstart(tmp_path / "notes.txt", force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_steps_keep_debug_and_verbose(tmp_path):
    """`protrans --debug quickstart` (or -v, -vv): each step's command line carries the flag, so
    that a failing step still shows its traceback; without it the step's own command line set
    debug back off, and the error came as one line."""
    from protrans_cli import console
    from protrans_cli.quickstart import QuickstartSummary, _global_flags, _run

    out = tmp_path / "q"
    (out / "corpus").mkdir(parents=True)
    args = _prep_line(out).split()[1:]  # the path holds no space here
    try:
        for (verbosity, debug), flags in (((0, True), ["--debug"]), ((1, False), ["-v"]),
                                          ((1, True), ["-v", "--debug"]), ((2, True), ["-v", "-v"])):
            console.configure(verbosity=verbosity, debug=debug)
            assert _global_flags() == flags
            _run("prep", args, QuickstartSummary(out))
            assert (console.state.verbosity, console.state.debug) == (verbosity, debug), flags
    finally:
        console.configure()


def test_force_on_a_mount_point_empties_it_in_place(run_cli, tmp_path, monkeypatch):
    """A container's volume as -o, run a second time with --force: refused as a mount point "written
    beside it and moved into its place", which quickstart is not (it writes in place; removing the
    folder itself fails on a mount point). It is emptied and written in, the folder itself kept."""
    from protrans_cli import quickstart
    from protrans_cli.io import files

    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "commands.sh").write_text("#!/bin/sh\n")
    (tmp_path / "mountinfo").write_bytes(b"95 22 8:1 /srv " + os.fsencode(out) + b" rw - ext4 /dev/sda1 rw\n")
    monkeypatch.setattr(files, "MOUNTINFO", str(tmp_path / "mountinfo"))
    inode, seen = out.stat().st_ino, []

    def first_step(step, args, summary):  # (the steps themselves: test_quickstart_end_to_end)
        seen.append(sorted(p.name for p in out.iterdir()))
        raise quickstart.UsageError("stop here")

    monkeypatch.setattr(quickstart, "_run", first_step)
    result = run_cli("quickstart", "-o", out, "--force")
    assert "stop here" in result.stderr, result.stderr
    assert seen == [sorted(quickstart.SUBFOLDERS)] and out.stat().st_ino == inode
    assert not (out / "model" / "config.json").exists()


def test_a_schedulers_warning_in_train_stops_quickstart_there(tmp_path, run_cli, monkeypatch):
    """SIGUSR1 (Slurm's --signal warning) during the train step: train stops after its step with a
    checkpoint and exits 0, as it should alone; quickstart went on to the labels and the onehot
    embeds, then failed at the first embed with the model ("a training run without its final model",
    exit 1). It stops there as for the warning in any other step: one line, exit 138."""
    import signal

    import protrans_cli.training.loop as loop

    def warned(config, **kwargs):  # (the stop itself: test_train_loop's signal tests)
        return loop.TrainResult(run_dir=config.output_dir, step=3, completed=False, stopped_by="SIGUSR1")

    monkeypatch.setattr(loop, "train", warned)
    result = run_cli("quickstart", "-o", tmp_path / "q")
    assert result.exit_code == 128 + signal.SIGUSR1, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "protrans: error: warned by SIGUSR1 (the job's time is nearly up): quickstart stopped in step 'train';")
    assert "--resume" not in result.stderr  # (train's own advice: quickstart has none)
    assert not any((tmp_path / "q" / "fasta").iterdir())  # (no step after it ran)


def test_a_folder_named_with_a_leading_dash_reaches_every_step_as_a_path(tmp_path, monkeypatch):
    """`quickstart -o ./-q`: pathlib drops the `./`, and embed read `-q/fasta/ss_train.fasta` as
    its options ("No such option '-/'"), after minutes of prep and train. Every step's command
    line is parsed here as its command parses it (the labels steps run: later steps read them)."""
    import click

    from protrans_cli import quickstart
    from protrans_cli.cli import cli

    monkeypatch.chdir(tmp_path)
    real, parsed = quickstart._run, []

    def step(name, args, summary):
        if name == "labels":
            real(name, args, summary)
        command = cli.get_command(click.Context(cli), args[0])
        opts, positional, _ = command.make_parser(click.Context(command, info_name=args[0])).parse_args(list(args[1:]))
        parsed.append((name, opts, positional))

    monkeypatch.setattr(quickstart, "_run", step)
    summary = quickstart.run_quickstart("./-q", family="bert")
    assert {name for name, _, _ in parsed} >= {"prep", "train", "embed", "fit", "predict", "knn", "variants", "project"}
    for name, opts, positional in parsed:
        for value in [*positional, *(v for values in opts.values() for v in (values if isinstance(values, list)
                                                                              else [values]))]:
            assert not str(value).startswith("-q"), (name, value)
    assert str(summary.output) == "-q"
